package dnsproxy

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// rawUpstream is a UDP socket the test answers from by hand, to send what a
// forger would.
func rawUpstream(t *testing.T) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

func readQuery(t *testing.T, pc *net.UDPConn) (*dns.Msg, netip.AddrPort) {
	t.Helper()
	m, from, err := tryReadQuery(pc)
	if err != nil {
		t.Fatal(err)
	}
	return m, from
}

func tryReadQuery(pc *net.UDPConn) (*dns.Msg, netip.AddrPort, error) {
	buf := make([]byte, 4096)
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, from, fmt.Errorf("upstream: read query: %w", err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		return nil, from, fmt.Errorf("upstream: unpack query: %w", err)
	}
	return m, from, nil
}

func answerA(q *dns.Msg, name, addr string) []byte {
	m := new(dns.Msg)
	m.SetReply(q)
	if name != "" {
		m.Question[0].Name = name
	}
	rr, _ := dns.NewRR(m.Question[0].Name + " 300 IN A " + addr)
	m.Answer = append(m.Answer, rr)
	b, _ := m.Pack()
	return b
}

// TestPooledSocketsRejectForgedAnswers: an answer counts only if it comes
// from the upstream's address and port and carries the query's ID and
// question. A forger who gets any one of them wrong is ignored, and the
// query still takes the real answer that follows.
func TestPooledSocketsRejectForgedAnswers(t *testing.T) {
	up := rawUpstream(t)
	r := startServer(t, Config{Upstreams: []netip.AddrPort{up.LocalAddr().(*net.UDPAddr).AddrPort()}, Cache: CacheOptions{Size: 10}})
	type result struct {
		m   *dns.Msg
		err error
	}
	res := make(chan result, 1)
	go func() {
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		c := &dns.Client{Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(m, r.udp)
		res <- result{resp, err}
	}()
	q, from := readQuery(t, up)

	forger, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	wrongID := q.Copy()
	wrongID.Id ^= 0x5a5a
	for _, forged := range []struct {
		name string
		send func() error
	}{
		{"right ID and question from another port", func() error {
			_, err := forger.WriteToUDPAddrPort(answerA(q, "", "203.0.113.1"), from)
			return err
		}},
		{"wrong ID", func() error { _, err := up.WriteToUDPAddrPort(answerA(wrongID, "", "203.0.113.2"), from); return err }},
		{"another question", func() error {
			_, err := up.WriteToUDPAddrPort(answerA(q, "evil.example.org.", "203.0.113.3"), from)
			return err
		}},
	} {
		if err := forged.send(); err != nil {
			t.Fatalf("send forged answer (%s): %v", forged.name, err)
		}
	}
	time.Sleep(50 * time.Millisecond) // the forgeries arrive first
	if _, err := up.WriteToUDPAddrPort(answerA(q, "WWW.Example.ORG.", "192.0.2.10"), from); err != nil {
		t.Fatal(err)
	}
	got := <-res
	if got.err != nil {
		t.Fatalf("query: %v", got.err)
	}
	if a := answers(got.m); a != "192.0.2.10" {
		t.Fatalf("answer %q, want the upstream's 192.0.2.10 (a forged answer was taken)", a)
	}
}

// TestPooledSocketsIDsAndRotation: queries waiting at once on a socket
// never share an ID, and no source port serves more than poolMaxUses
// queries or is used for new ones after poolMaxAge.
func TestPooledSocketsIDsAndRotation(t *testing.T) {
	up := rawUpstream(t)
	r := startServer(t, Config{Upstreams: []netip.AddrPort{up.LocalAddr().(*net.UDPAddr).AddrPort()}, QueryTimeout: 20 * time.Second})
	const burst = 100
	// Hold every query of the burst before answering any, so that they are
	// all pending at once.
	var wg sync.WaitGroup
	for i := 0; i < burst; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("n%d.example.org.", i), dns.TypeA)
			c := &dns.Client{Timeout: 20 * time.Second}
			if resp, _, err := c.Exchange(m, r.udp); err != nil || answers(resp) != "192.0.2.10" {
				t.Errorf("query %d: %v %v", i, resp, err)
			}
		}()
	}
	type held struct {
		q    *dns.Msg
		from netip.AddrPort
	}
	var queries []held
	type key struct {
		port netip.AddrPort
		id   uint16
	}
	seen := map[key]bool{}
	perPort := map[netip.AddrPort]int{}
	for len(queries) < burst {
		q, from := readQuery(t, up)
		k := key{from, q.Id}
		if seen[k] {
			t.Errorf("two pending queries share source %s and ID %d", from, q.Id)
		}
		seen[k] = true
		perPort[from]++
		queries = append(queries, held{q, from})
	}
	for _, h := range queries {
		_, _ = up.WriteToUDPAddrPort(answerA(h.q, "", "192.0.2.10"), h.from)
	}
	wg.Wait()
	if len(perPort) < 2 {
		t.Errorf("%d queries from %d source ports: want them spread over the pool", burst, len(perPort))
	}

	// Enough queries one after another to use up several sockets.
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		for i := 0; i < 3*poolMaxUses; i++ {
			q, from, err := tryReadQuery(up)
			if err != nil {
				t.Error(err)
				return
			}
			perPort[from]++
			_, _ = up.WriteToUDPAddrPort(answerA(q, "", "192.0.2.10"), from)
		}
	}()
	for i := 0; i < 3*poolMaxUses; i++ {
		r.ask(t, "udp", fmt.Sprintf("s%d.example.org.", i), dns.TypeA, 0)
	}
	<-answered
	for p, n := range perPort {
		if n > poolMaxUses {
			t.Errorf("source %s served %d queries, more than %d", p, n, poolMaxUses)
		}
	}

	// After poolMaxAge, a new query goes out from a port not used before.
	time.Sleep(poolMaxAge + 100*time.Millisecond)
	go func() {
		m := new(dns.Msg)
		m.SetQuestion("late.example.org.", dns.TypeA)
		_, _, _ = (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, r.udp)
	}()
	q, from := readQuery(t, up)
	if perPort[from] > 0 {
		t.Errorf("a query after %v went out from %s, used before", poolMaxAge, from)
	}
	_, _ = up.WriteToUDPAddrPort(answerA(q, "", "192.0.2.10"), from)
}

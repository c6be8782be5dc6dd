package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func meshTable() *Table {
	return MustTable(map[string][]netip.Addr{
		"httpbin.mesh": addrs("240.0.0.1", "fd00::1"),
		"v4only.mesh":  addrs("240.0.0.2"),
		"httpbin.org":  addrs("240.0.0.3"),
		"*.wild.mesh":  addrs("240.0.0.4"),
		"many.mesh":    addrs("240.0.1.1", "240.0.1.2", "240.0.1.3", "240.0.1.4", "240.0.1.5", "240.0.1.6", "240.0.1.7", "240.0.1.8", "240.0.1.9", "240.0.1.10", "240.0.1.11", "240.0.1.12", "240.0.1.13", "240.0.1.14", "240.0.1.15", "240.0.1.16", "240.0.1.17", "240.0.1.18", "240.0.1.19", "240.0.1.20", "240.0.1.21", "240.0.1.22", "240.0.1.23", "240.0.1.24", "240.0.1.25", "240.0.1.26", "240.0.1.27", "240.0.1.28", "240.0.1.29", "240.0.1.30", "240.0.1.31"),
	}, TableOptions{TTL: 45 * time.Second})
}

func answers(m *dns.Msg) string {
	var s []string
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			s = append(s, v.A.String())
		case *dns.AAAA:
			s = append(s, v.AAAA.String())
		case *dns.CNAME:
			s = append(s, "CNAME "+v.Target)
		case *dns.TXT:
			s = append(s, "TXT")
		}
	}
	return strings.Join(s, " ")
}

func TestTableAnswers(t *testing.T) {
	up := startUpstream(t, zone)
	r := startServer(t, Config{Table: meshTable(), Upstreams: []netip.AddrPort{up.addr},
		Search: []string{"default.svc.cluster.local", "svc.cluster.local"}})
	tests := []struct {
		net, name string
		qtype     uint16
		edns      uint16
		rcode     int
		aa        bool
		want      string
	}{
		{"udp", "httpbin.mesh.", dns.TypeA, 0, dns.RcodeSuccess, true, "240.0.0.1"},
		{"udp", "HttpBin.MESH.", dns.TypeAAAA, 0, dns.RcodeSuccess, true, "fd00::1"},
		{"tcp", "httpbin.mesh.", dns.TypeA, 0, dns.RcodeSuccess, true, "240.0.0.1"},
		{"udp", "httpbin.mesh.", dns.TypeA, 1232, dns.RcodeSuccess, true, "240.0.0.1"},
		{"udp", "v4only.mesh.", dns.TypeAAAA, 0, dns.RcodeSuccess, true, ""}, // NODATA, not NXDOMAIN
		{"udp", "httpbin.mesh.", dns.TypeMX, 0, dns.RcodeSuccess, true, ""},
		{"udp", "nope.mesh.", dns.TypeA, 0, dns.RcodeNameError, true, ""},
		{"udp", "a.b.wild.mesh.", dns.TypeA, 0, dns.RcodeSuccess, true, "240.0.0.4"},
		{"udp", "httpbin.org.", dns.TypeA, 0, dns.RcodeSuccess, true, "240.0.0.3"},
		{"udp", "httpbin.mesh.default.svc.cluster.local.", dns.TypeA, 0, dns.RcodeSuccess, true, "CNAME httpbin.mesh. 240.0.0.1"},
		{"udp", "httpbin.org.svc.cluster.local.", dns.TypeAAAA, 0, dns.RcodeSuccess, true, "CNAME httpbin.org."},
		{"udp", "www.example.org.", dns.TypeA, 0, dns.RcodeSuccess, false, "192.0.2.10"},
		{"udp", "missing.example.org.", dns.TypeA, 0, dns.RcodeNameError, false, ""},
		{"tcp", "many.mesh.", dns.TypeA, 0, dns.RcodeSuccess, true, "240.0.1.1 240.0.1.2 240.0.1.3 240.0.1.4 240.0.1.5 240.0.1.6 240.0.1.7 240.0.1.8 240.0.1.9 240.0.1.10 240.0.1.11 240.0.1.12 240.0.1.13 240.0.1.14 240.0.1.15 240.0.1.16 240.0.1.17 240.0.1.18 240.0.1.19 240.0.1.20 240.0.1.21 240.0.1.22 240.0.1.23 240.0.1.24 240.0.1.25 240.0.1.26 240.0.1.27 240.0.1.28 240.0.1.29 240.0.1.30 240.0.1.31"},
	}
	for _, tt := range tests {
		m := r.ask(t, tt.net, tt.name, tt.qtype, tt.edns)
		if m.Rcode != tt.rcode || m.Authoritative != tt.aa || answers(m) != tt.want {
			t.Errorf("%s %s over %s: rcode %s aa %v answers %q; want %s %v %q", tt.name, dns.TypeToString[tt.qtype], tt.net,
				dns.RcodeToString[m.Rcode], m.Authoritative, answers(m), dns.RcodeToString[tt.rcode], tt.aa, tt.want)
		}
		if m.Question[0].Name != tt.name {
			t.Errorf("question echoed as %q, want the client's spelling %q", m.Question[0].Name, tt.name)
		}
		if (m.IsEdns0() != nil) != (tt.edns > 0) {
			t.Errorf("%s: OPT in response = %v, client sent one = %v", tt.name, m.IsEdns0() != nil, tt.edns > 0)
		}
		if tt.aa && len(m.Answer) > 0 && m.Answer[0].Header().Ttl != 45 {
			t.Errorf("%s: TTL %d, want 45", tt.name, m.Answer[0].Header().Ttl)
		}
	}
	// 31 A records do not fit 512 bytes: TC over UDP, everything over TCP.
	if m := r.ask(t, "udp", "many.mesh.", dns.TypeA, 0); !m.Truncated {
		t.Errorf("many.mesh over UDP without EDNS: TC not set (%d answers)", len(m.Answer))
	}
	if m := r.ask(t, "udp", "many.mesh.", dns.TypeA, 4096); m.Truncated || len(m.Answer) != 31 {
		t.Errorf("many.mesh over UDP with EDNS 4096: TC %v, %d answers", m.Truncated, len(m.Answer))
	}
	s := r.srv.Metrics().Snapshot()
	if s.TableHits == 0 || s.Queries["A"]["table"] == 0 || s.Queries["A"]["search"] == 0 {
		t.Errorf("metrics do not show table answers: %+v", s.Queries)
	}
}

func TestSetTableSwaps(t *testing.T) {
	r := startServer(t, Config{Table: meshTable(), UnknownNames: UnknownRefused})
	r.srv.SetTable(MustTable(map[string][]netip.Addr{"new.mesh": addrs("240.0.9.9")}, TableOptions{}))
	if m := r.ask(t, "udp", "new.mesh.", dns.TypeA, 0); answers(m) != "240.0.9.9" {
		t.Errorf("after SetTable: %q", answers(m))
	}
	if m := r.ask(t, "udp", "httpbin.mesh.", dns.TypeA, 0); m.Rcode != dns.RcodeNameError {
		t.Errorf("old name still answered: %s %q", dns.RcodeToString[m.Rcode], answers(m))
	}
}

func TestUnknownNamesPolicy(t *testing.T) {
	up := startUpstream(t, zone)
	for _, tt := range []struct {
		policy string
		rcode  int
	}{{"forward", dns.RcodeSuccess}, {"nxdomain", dns.RcodeNameError}, {"refused", dns.RcodeRefused}} {
		p, err := ParseUnknownPolicy(tt.policy)
		if err != nil {
			t.Fatal(err)
		}
		r := startServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, UnknownNames: p})
		if m := r.ask(t, "udp", "www.example.org.", dns.TypeA, 0); m.Rcode != tt.rcode {
			t.Errorf("policy %s: rcode %s, want %s", tt.policy, dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
		}
	}
	if _, err := ParseUnknownPolicy("drop"); err == nil || !strings.Contains(err.Error(), `"drop"`) {
		t.Errorf("ParseUnknownPolicy(drop) error = %v", err)
	}
}

func TestForwardCacheAndFreshIDs(t *testing.T) {
	up := startUpstream(t, zone)
	r := startServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, Cache: CacheOptions{Size: 100}})
	var clientIDs []uint16
	for i := 0; i < 3; i++ {
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		clientIDs = append(clientIDs, m.Id)
		resp, err := dns.Exchange(m, r.udp)
		if err != nil || answers(resp) != "192.0.2.10" || resp.Id != m.Id {
			t.Fatalf("exchange %d: %v %v", i, resp, err)
		}
		if i > 0 && resp.Answer[0].Header().Ttl > 300 {
			t.Errorf("cached TTL %d > original", resp.Answer[0].Header().Ttl)
		}
	}
	if n := up.queries.Load(); n != 1 {
		t.Errorf("upstream asked %d times, want 1 (cache)", n)
	}
	// Negative answers are cached by the SOA's MINIMUM (RFC 2308).
	r.ask(t, "udp", "gone.example.org.", dns.TypeA, 0)
	r.ask(t, "udp", "gone.example.org.", dns.TypeA, 0)
	if n := up.queries.Load(); n != 2 {
		t.Errorf("upstream asked %d times after a repeated NXDOMAIN, want 2", n)
	}
	// The DO bit is part of the key.
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	m.SetEdns0(1232, true)
	if resp, err := dns.Exchange(m, r.udp); err != nil || !resp.IsEdns0().Do() {
		t.Errorf("DO query: %v %v", resp, err)
	}
	if n := up.queries.Load(); n != 3 {
		t.Errorf("DO query served from the non-DO cache entry (upstream asked %d times)", n)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if up.ids[0] == clientIDs[0] {
		t.Errorf("upstream saw the client's ID %d: IDs must be fresh", up.ids[0])
	}
	s := r.srv.Metrics().Snapshot()
	if s.CacheHits < 3 || len(s.Upstreams) != 1 || s.Upstreams[0].Queries != 3 {
		t.Errorf("metrics: %+v", s)
	}
}

func TestTruncationAndTCPRetry(t *testing.T) {
	up := startUpstream(t, zone)
	r := startServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, Cache: CacheOptions{Size: 100}})
	udp := r.ask(t, "udp", "big.example.org.", dns.TypeTXT, 0)
	if !udp.Truncated {
		t.Errorf("a 2 kB answer over UDP without EDNS came back untruncated (%d records)", len(udp.Answer))
	}
	tcp := r.ask(t, "tcp", "big.example.org.", dns.TypeTXT, 0)
	if tcp.Truncated || len(tcp.Answer) != 20 {
		t.Errorf("over TCP: TC %v, %d records, want 20", tcp.Truncated, len(tcp.Answer))
	}
	big := r.ask(t, "udp", "big.example.org.", dns.TypeTXT, 4096)
	if big.Truncated || len(big.Answer) != 20 {
		t.Errorf("over UDP with a 4096 buffer: TC %v, %d records", big.Truncated, len(big.Answer))
	}
	if r.srv.Metrics().Snapshot().Truncated == 0 {
		t.Error("truncation not counted")
	}
}

func TestHedgingAndFailover(t *testing.T) {
	silent := silentUpstream(t)
	up := startUpstream(t, zone)
	r := startServer(t, Config{Upstreams: []netip.AddrPort{silent, up.addr}, HedgeDelay: 50 * time.Millisecond, QueryTimeout: 2 * time.Second})
	start := time.Now()
	m := r.ask(t, "udp", "www.example.org.", dns.TypeA, 0)
	if answers(m) != "192.0.2.10" {
		t.Fatalf("answer %v", m)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a silent first upstream delayed the answer %v; hedging should ask the second after 50ms", d)
	}
	// All upstreams down: SERVFAIL, after the query deadline and not later.
	r2 := startServer(t, Config{Upstreams: []netip.AddrPort{silent, silentUpstream(t)}, HedgeDelay: 20 * time.Millisecond, QueryTimeout: 300 * time.Millisecond})
	start = time.Now()
	c := &dns.Client{Timeout: 3 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	resp, _, err := c.Exchange(q, r2.udp)
	if err != nil || resp.Rcode != dns.RcodeServerFailure {
		t.Fatalf("all upstreams down: %v %v", resp, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("SERVFAIL took %v", d)
	}
}

func TestServeStale(t *testing.T) {
	var down sync.Mutex
	broken := false
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) {
		down.Lock()
		b := broken
		down.Unlock()
		if b {
			m := new(dns.Msg)
			m.SetRcode(r, dns.RcodeServerFailure)
			_ = w.WriteMsg(m)
			return
		}
		zone(w, r)
	})
	r := startServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, QueryTimeout: 500 * time.Millisecond,
		Cache: CacheOptions{Size: 10, ServeStale: true}})
	if m := r.ask(t, "udp", "short.example.org.", dns.TypeA, 0); answers(m) != "192.0.2.11" {
		t.Fatalf("first answer %v", m)
	}
	time.Sleep(1100 * time.Millisecond) // TTL 1 s
	down.Lock()
	broken = true
	down.Unlock()
	m := r.ask(t, "udp", "short.example.org.", dns.TypeA, 0)
	if answers(m) != "192.0.2.11" || m.Answer[0].Header().Ttl != staleTTL {
		t.Fatalf("with the upstream failing, want the stale answer with TTL %d, got %v", staleTTL, m)
	}
	if s := r.srv.Metrics().Snapshot(); s.Queries["A"]["stale"] != 1 {
		t.Errorf("stale answers counted %v", s.Queries)
	}
}

func TestMalformedQueries(t *testing.T) {
	r := startServer(t, Config{Table: meshTable(), UnknownNames: UnknownRefused})
	conn, err := net.Dial("udp", r.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	good := new(dns.Msg)
	good.SetQuestion("httpbin.mesh.", dns.TypeA)
	packed, _ := good.Pack()
	cases := []struct {
		name  string
		b     []byte
		rcode int // -1: no answer
	}{
		{"header only, no question", packed[:12], dns.RcodeFormatError},
		{"question cut short", packed[:20], dns.RcodeFormatError},
		{"response bit set", append([]byte{packed[0], packed[1], 0x81}, packed[3:]...), -1},
		{"two questions", twoQuestions(), dns.RcodeFormatError},
		{"notify opcode", opcode(dns.OpcodeNotify), dns.RcodeNotImplemented},
		// RFC 6891 section 6.1.1: more than one OPT RR is FORMERR.
		{"two OPT records", twoOPTs("httpbin.mesh."), dns.RcodeFormatError},
		{"two OPT records, forwarded name", twoOPTs("www.example.org."), dns.RcodeFormatError},
		{"OPT in the answer section", optInAnswer(), dns.RcodeFormatError},
	}
	buf := make([]byte, 4096)
	for _, c := range cases {
		if _, err := conn.Write(c.b); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := conn.Read(buf)
		if c.rcode < 0 {
			if err == nil {
				t.Errorf("%s: got an answer, want none", c.name)
			}
			continue
		}
		if err != nil || n < 12 || int(buf[3]&0xf) != c.rcode || buf[0] != c.b[0] || buf[1] != c.b[1] {
			t.Errorf("%s: %v % x, want rcode %d", c.name, err, buf[:n], c.rcode)
		}
	}
	// BADVERS needs the extended rcode in OPT.
	m := new(dns.Msg)
	m.SetQuestion("httpbin.mesh.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	resp, err := dns.Exchange(m, r.udp)
	if err != nil || resp.Rcode != dns.RcodeBadVers {
		t.Errorf("EDNS version 1: %v %v", resp, err)
	}
	// The server still answers.
	if m := r.ask(t, "udp", "httpbin.mesh.", dns.TypeA, 0); answers(m) != "240.0.0.1" {
		t.Errorf("after garbage: %v", m)
	}
}

func twoQuestions() []byte {
	m := new(dns.Msg)
	m.SetQuestion("a.mesh.", dns.TypeA)
	m.Question = append(m.Question, dns.Question{Name: "b.mesh.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	b, _ := m.Pack()
	return b
}

func twoOPTs(name string) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	m.SetEdns0(4096, false)
	b, _ := m.Pack()
	return b
}

func optInAnswer() []byte {
	m := new(dns.Msg)
	m.SetQuestion("httpbin.mesh.", dns.TypeA)
	m.Answer = append(m.Answer, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 1232}})
	b, _ := m.Pack()
	return b
}

func opcode(op int) []byte {
	m := new(dns.Msg)
	m.SetQuestion("a.mesh.", dns.TypeSOA)
	m.Opcode = op
	b, _ := m.Pack()
	return b
}

func TestRefusesNonLoopbackAndLoops(t *testing.T) {
	_, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:15053")}})
	if err == nil || !strings.Contains(err.Error(), "0.0.0.0:15053") || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("non-loopback listen: %v", err)
	}
	if _, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:15053")}, AllowNonLoopback: true}); err != nil {
		t.Errorf("with AllowNonLoopback: %v", err)
	}
	own := netip.MustParseAddrPort("127.0.0.1:15053")
	if _, err := New(Config{Listen: []netip.AddrPort{own}, Upstreams: []netip.AddrPort{own}}); err == nil || !strings.Contains(err.Error(), "loop") {
		t.Errorf("own address as upstream: %v", err)
	}
}

func TestTCPLimitsAndNoGoroutineLeak(t *testing.T) {
	// The upstream outlives the server (its cleanup runs at the end of the
	// test): count its goroutines in the baseline.
	up := startUpstream(t, zone)
	before := runtime.NumGoroutine()
	func() {
		srv, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, UDPSockets: 2,
			Table: meshTable(), Upstreams: []netip.AddrPort{up.addr}, MaxTCPConns: 4, MaxTCPConnsPerPeer: 4, TCPIdleTimeout: 1500 * time.Millisecond, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- srv.Run(ctx) }()
		<-srv.Ready()
		addr := srv.Addrs()[0].String()
		// Load: many concurrent UDP and TCP clients, table and forwarded names.
		var wg sync.WaitGroup
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 20; j++ {
					name := "httpbin.mesh."
					if j%2 == 1 {
						name = "www.example.org."
					}
					m := new(dns.Msg)
					m.SetQuestion(name, dns.TypeA)
					_, _, _ = (&dns.Client{Timeout: time.Second}).Exchange(m, addr)
				}
			}()
		}
		wg.Wait()
		// Idle TCP connections are closed after the idle timeout.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(4 * time.Second))
		start := time.Now()
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("idle TCP connection not closed by the server: %v after %v", err, time.Since(start))
		}
		c.Close()
		// More connections than MaxTCPConns: the extra ones are closed at once.
		// First let the server account for every connection closed so far.
		for wait := time.Now().Add(5 * time.Second); srv.Metrics().Snapshot().TCPConns > 0 && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond)
		}
		var conns []net.Conn
		for i := 0; i < 6; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		// Read from all of them at once: the server has a second (less
		// than its idle timeout) to close the extra ones, however loaded
		// the machine is.
		var closed atomic.Int32
		var readers sync.WaitGroup
		for _, c := range conns {
			readers.Add(1)
			go func(c net.Conn) {
				defer readers.Done()
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
					closed.Add(1)
				}
			}(c)
		}
		readers.Wait()
		for _, c := range conns {
			c.Close()
		}
		if n := closed.Load(); n != 2 {
			t.Errorf("%d connections over the limit of 4 closed, want 2", n)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		buf := make([]byte, 1<<16)
		t.Errorf("goroutines: %d before, %d after shutdown\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

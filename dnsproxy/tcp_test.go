package dnsproxy

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestTCPHoarderDoesNotDenyOthers: one process opens as many TCP
// connections as the server allows and holds them (some idle, some with
// half a query sent); a new client must still get its answer over TCP at
// once, not after the hoarder's connections time out.
func TestTCPHoarderDoesNotDenyOthers(t *testing.T) {
	r := startServer(t, Config{Table: meshTable(), MaxTCPConns: 256, TCPIdleTimeout: time.Minute})
	var hoard []net.Conn
	t.Cleanup(func() {
		for _, c := range hoard {
			c.Close()
		}
	})
	for i := 0; i < 2*256; i++ {
		c, err := net.Dial("tcp", r.udp)
		if err != nil {
			t.Fatalf("hoarding connection %d: %v", i, err)
		}
		if i%2 == 1 {
			_, _ = c.Write([]byte{0, 40}) // a length, and then nothing
		}
		hoard = append(hoard, c)
	}
	// Let the server take them all in, and let them age past the grace
	// a new connection has.
	time.Sleep(time.Second)
	if n := r.srv.Metrics().Snapshot().TCPConns; n > 256 {
		t.Errorf("%d TCP connections open, over the limit of 256", n)
	}
	for i := 0; i < 5; i++ {
		m := new(dns.Msg)
		m.SetQuestion("httpbin.mesh.", dns.TypeA)
		c := &dns.Client{Net: "tcp", Timeout: 3 * time.Second}
		resp, _, err := c.Exchange(m, r.udp)
		if err != nil {
			t.Fatalf("query %d over TCP while another process holds every connection: %v", i, err)
		}
		if answers(resp) != "240.0.0.1" {
			t.Fatalf("query %d: %v", i, resp)
		}
	}
}

// TestTCPBusyConnectionsKept: a connection whose query is being answered is
// never closed to make room; a new connection is refused instead.
func TestTCPBusyConnectionsKept(t *testing.T) {
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) {
		time.Sleep(1500 * time.Millisecond)
		zone(w, r)
	})
	r := startServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, MaxTCPConns: 4, MaxTCPConnsPerPeer: 4})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		c, err := dns.Dial("tcp", r.udp)
		if err != nil {
			t.Fatal(err)
		}
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		if err := c.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := c.ReadMsg()
			if err == nil && answers(resp) != "192.0.2.10" {
				t.Errorf("answer %v", resp)
			}
			errs <- err
		}()
	}
	// The four queries are in flight once the upstream has them.
	for deadline := time.Now().Add(5 * time.Second); up.queries.Load() < 4 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	extra, err := net.Dial("tcp", r.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("a fifth connection with four busy ones at a limit of 4: %v, want it closed", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a busy connection lost its answer: %v", err)
		}
	}
}

package dnsproxy

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// blackholeFlood is an upstream that answers www.example.org at once and
// never answers anything else, so that flood queries stay in flight.
func blackholeFlood(w dns.ResponseWriter, r *dns.Msg) {
	if r.Question[0].Name == "www.example.org." {
		zone(w, r)
	}
}

// sendUnique sends n queries for unique names from one socket, as fast as
// it can, and returns the socket (the caller closes it).
func sendUnique(t *testing.T, addr string, n int) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	for j := 0; j < n; j++ {
		m.SetQuestion(fmt.Sprintf("x%d.flood.example.", j), dns.TypeA)
		b, _ := m.Pack()
		_, _ = c.Write(b)
		if j%32 == 31 {
			time.Sleep(time.Millisecond) // let the server read; the point is to fill its queue, not its socket
		}
	}
	return c
}

// TestFloodFairness: one client fills the forwarding queue with names its
// upstream never answers. Table and cache answers still come at once, and
// another client's forwarded name is still forwarded and answered.
func TestFloodFairness(t *testing.T) {
	up := startUpstream(t, blackholeFlood)
	r := startServer(t, Config{Table: meshTable(), Upstreams: []netip.AddrPort{up.addr}, Cache: CacheOptions{Size: 1000},
		MaxInFlight: 256, QueryTimeout: 20 * time.Second, DrainTimeout: 100 * time.Millisecond})
	c := sendUnique(t, r.udp, 2000)
	defer c.Close()
	// Wait until the server sheds the flood: more is asked than it takes.
	for deadline := time.Now().Add(10 * time.Second); r.srv.Metrics().Snapshot().Queries["other"]["dropped"] == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	t.Logf("upstream saw %d flood queries; %v", up.queries.Load(), r.srv.Metrics().Snapshot().Queries)
	for i := 0; i < 3; i++ {
		if m := r.ask(t, "udp", "httpbin.mesh.", dns.TypeA, 0); answers(m) != "240.0.0.1" {
			t.Fatalf("table answer during the flood: %v", m)
		}
	}
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	resp, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, r.udp)
	if err != nil || answers(resp) != "192.0.2.10" {
		t.Fatalf("another client's forwarded name while one client floods the forwarding queue: %v %v", resp, err)
	}
	if m := r.ask(t, "udp", "www.example.org.", dns.TypeA, 0); answers(m) != "192.0.2.10" {
		t.Fatalf("cache answer during the flood: %v", m)
	}
}

// TestFloodMemoryBounded: a full forwarding queue costs a bounded amount of
// memory (the issue measured 303 MB RSS under a flood).
func TestFloodMemoryBounded(t *testing.T) {
	up := startUpstream(t, blackholeFlood)
	r := startServer(t, Config{Table: meshTable(), Upstreams: []netip.AddrPort{up.addr},
		QueryTimeout: 20 * time.Second, DrainTimeout: 100 * time.Millisecond})
	// The defaults hold: up to 1024 queries in flight, 128 a client.
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var conns []net.Conn
	for i := 0; i < 16; i++ { // many clients: fairness must not be what bounds it
		conns = append(conns, sendUnique(t, r.udp, 200))
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); r.srv.Metrics().Snapshot().Queries["other"]["dropped"] == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	// With the forwarding queue full (or nearly: the reader may have shed
	// part of the burst), table answers are still made.
	for i := 0; i < 3; i++ {
		if m := r.ask(t, "udp", "httpbin.mesh.", dns.TypeA, 0); answers(m) != "240.0.0.1" {
			t.Fatalf("table answer with the forwarding queue full: %v", m)
		}
	}
	var after runtime.MemStats
	runtime.GC() // what is held, not garbage not yet collected
	runtime.ReadMemStats(&after)
	grew := (after.HeapInuse + after.StackInuse) - (before.HeapInuse + before.StackInuse)
	t.Logf("%d queries upstream, %d in flight, %d goroutines; heap grew %.1f MB, stacks %.1f MB", up.queries.Load(), len(r.srv.inflight), runtime.NumGoroutine(),
		(float64(after.HeapInuse)-float64(before.HeapInuse))/1e6, (float64(after.StackInuse)-float64(before.StackInuse))/1e6)
	if grew > 30e6 {
		t.Errorf("with the forwarding queue full, heap and stacks grew by %.1f MB; want under 30 MB", float64(grew)/1e6)
	}
}

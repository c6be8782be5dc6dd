package dnsproxy

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestServeStaleEarly blackholes the upstream after it answered: the stale
// answer must come after the stale-answer timer, not after the whole query
// timeout, and once the upstream is known to be failing, at once.
func TestServeStaleEarly(t *testing.T) {
	var blackholed atomic.Bool
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) {
		if blackholed.Load() {
			return // never answer: a blackholed upstream
		}
		m := new(dns.Msg)
		m.SetReply(r)
		rr, _ := dns.NewRR(r.Question[0].Name + " 1 IN A 192.0.2.11")
		m.Answer = append(m.Answer, rr)
		_ = w.WriteMsg(m)
	})
	const queryTimeout = 4 * time.Second
	r := startServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, QueryTimeout: queryTimeout,
		Cache: CacheOptions{Size: 100, ServeStale: true, StaleAnswerTimeout: 2 * time.Second}})
	names := []string{"a.example.org.", "b.example.org.", "c.example.org.", "d.example.org."}
	for _, n := range names {
		if m := r.ask(t, "udp", n, dns.TypeA, 0); answers(m) != "192.0.2.11" {
			t.Fatalf("%s: first answer %v", n, m)
		}
	}
	time.Sleep(1100 * time.Millisecond) // TTL 1 s
	blackholed.Store(true)

	// Three names at once: each gets its stale answer after the timer;
	// their upstream attempts time out and mark the upstream failing.
	var wg sync.WaitGroup
	for _, n := range names[:3] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			m := r.ask(t, "udp", n, dns.TypeA, 0)
			d := time.Since(start)
			if answers(m) != "192.0.2.11" || m.Answer[0].Header().Ttl != staleTTL {
				t.Errorf("%s: want the stale answer, got %v", n, m)
			}
			// The timer is 2 s, the query timeout 4 s: well between.
			if d >= queryTimeout-500*time.Millisecond {
				t.Errorf("%s: stale answer after %v, want it after the 2 s stale-answer timer, not the %v query timeout", n, d, queryTimeout)
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(3 * queryTimeout)
	for r.srv.fwd.anyHealthy(time.Now()) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if r.srv.fwd.anyHealthy(time.Now()) {
		t.Fatal("the blackholed upstream is still considered healthy")
	}
	// Known to be failing: no more waiting for it.
	sent := up.queries.Load()
	start := time.Now()
	m := r.ask(t, "udp", names[3], dns.TypeA, 0)
	if d := time.Since(start); d >= time.Second {
		t.Errorf("with the upstream known to be failing, the stale answer took %v; want it at once, not after the 2 s timer", d)
	}
	if answers(m) != "192.0.2.11" || m.Answer[0].Header().Ttl != staleTTL {
		t.Errorf("want the stale answer, got %v", m)
	}
	// And no more waiting on it in the background either: one refresh at
	// a time goes out (it may start with any of these names: the last of
	// the earlier ones may still be finishing), no more.
	for _, n := range names[:3] {
		start := time.Now()
		if m := r.ask(t, "udp", n, dns.TypeA, 0); answers(m) != "192.0.2.11" {
			t.Errorf("%s: want the stale answer, got %v", n, m)
		}
		if d := time.Since(start); d >= time.Second {
			t.Errorf("%s: stale answer took %v with the upstream known to be failing", n, d)
		}
	}
	if more := up.queries.Load() - sent; more > 1 {
		t.Errorf("%d queries sent to the upstream known to be failing for four stale names, want one refresh at most", more)
	}
	if s := r.srv.Metrics().Snapshot(); s.Queries["A"]["stale"] != 7 {
		t.Errorf("stale answers counted %v, want 7", s.Queries)
	}
}

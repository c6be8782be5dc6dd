package kernelanswers

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// upstream serves A answers for every name, with ttl, counting the
// queries it gets. It listens on this process's loopback, where the
// interceptor's upstream sockets are made (only its listeners are in the
// test's namespace).
func upstream(t *testing.T, ttl uint32) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int64
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		asked.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		if r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(198, 18, 0, 7)},
				&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(198, 18, 0, 8)})
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return netip.MustParseAddrPort(pc.LocalAddr().String()), &asked
}

// withoutTTLs is an answer with its records' TTLs zeroed, and the TTLs:
// the kernel and the interceptor age them by whole seconds on two clocks,
// so they may differ by one at a second's turn.
func withoutTTLs(t *testing.T, b []byte) ([]byte, []uint32) {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	var ttls []uint32
	for _, rr := range append(m.Answer, m.Ns...) {
		ttls = append(ttls, rr.Header().Ttl)
		rr.Header().Ttl = 0
	}
	m.Compress = true
	out, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return out, ttls
}

// TestKernelAnswersFromTheCache: a forwarded name's answer, once the
// interceptor has cached it, is sent by the kernel until it expires, as
// the interceptor would send it from its cache (the same bytes but for
// TTLs aged on another clock), to clients with and without EDNS; a name
// spelled otherwise, or the answer expired, is the interceptor's; and a
// name the table takes over is no longer answered from the cache.
func TestKernelAnswersFromTheCache(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, "kanscache")
	up, asked := upstream(t, 3)
	a, err := Load(listen)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s := serveWith(t, n, dnsproxy.Config{
		UDPSockets: 1, Upstreams: []netip.AddrPort{up}, UpstreamMark: 0,
		Cache: dnsproxy.CacheOptions{Size: 100}, CacheObserver: a.CacheObserver(),
	})
	if _, err := Attach(n.Path(), a.Program()); err != nil {
		t.Fatal(err)
	}
	defer Detach(n.Path())

	plain := query{name: "plain", msg: q("fwd.example.", dns.TypeA)}
	withEDNS := query{name: "EDNS", msg: q("fwd.example.", dns.TypeA, edns(false))}
	first := exchange(t, n, "127.0.0.1:15053", []query{plain})[0]
	if first == nil || asked.Load() != 1 {
		t.Fatalf("first query: answer %x, upstream asked %d times", first, asked.Load())
	}
	if a.CachedAnswers() != 2 {
		t.Fatalf("the kernel holds %d cached answers, want 2 (with and without EDNS)", a.CachedAnswers())
	}
	for _, addr := range []string{"127.0.0.1:15053", "[::1]:15053"} {
		kernel := exchange(t, n, addr, []query{plain, withEDNS})
		st, err := a.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if err := Detach(n.Path()); err != nil {
			t.Fatal(err)
		}
		user := exchange(t, n, addr, []query{plain, withEDNS})
		if _, err := Attach(n.Path(), a.Program()); err != nil {
			t.Fatal(err)
		}
		for i := range kernel {
			if kernel[i] == nil || user[i] == nil {
				t.Fatalf("%s query %d: kernel %x, interceptor %x", addr, i, kernel[i], user[i])
			}
			kb, kt := withoutTTLs(t, kernel[i])
			ub, ut := withoutTTLs(t, user[i])
			if !bytes.Equal(kb, ub) {
				t.Errorf("%s query %d: kernel answer\n%x\nwant the interceptor's\n%x", addr, i, kernel[i], user[i])
			}
			for j := range kt {
				if d := int(kt[j]) - int(ut[j]); d < -1 || d > 1 || kt[j] > 3 {
					t.Errorf("%s query %d: kernel TTLs %v, interceptor's %v", addr, i, kt, ut)
				}
			}
		}
		if st.Cached < 2 {
			t.Errorf("%s: %d answers from the kernel's cache, want 2 (%+v)", addr, st.Cached, st)
		}
	}
	if asked.Load() != 1 {
		t.Errorf("upstream asked %d times, want once", asked.Load())
	}

	// Spelled otherwise: the interceptor's (whose slow path answers from
	// its cache, keeping the asked spelling).
	before, _ := a.Stats()
	if got := exchange(t, n, "127.0.0.1:15053", []query{{msg: q("FWD.example.", dns.TypeA)}})[0]; got == nil || !bytes.Contains(got, []byte("FWD")) {
		t.Fatalf("FWD.example: %x", got)
	}
	if after, _ := a.Stats(); after.Cached != before.Cached {
		t.Errorf("a query spelled otherwise was answered from the kernel's cache")
	}

	// Expired: the interceptor asks again, and the kernel holds the new
	// answer.
	time.Sleep(3100 * time.Millisecond)
	if got := exchange(t, n, "127.0.0.1:15053", []query{plain})[0]; got == nil {
		t.Fatal("no answer after expiry")
	}
	if asked.Load() != 2 {
		t.Errorf("after expiry the upstream was asked %d times in all, want 2", asked.Load())
	}

	// The table takes the name: answered from the table, not the cache.
	tb, err := dnsproxy.NewTable(map[string][]netip.Addr{"fwd.example": {netip.MustParseAddr("240.0.0.9")}}, dnsproxy.TableOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.SetTable(tb)
	if a.CachedAnswers() != 0 {
		t.Errorf("after the table took the name, the kernel still holds %d cached answers", a.CachedAnswers())
	}
	if _, err := a.Sync(tb); err != nil {
		t.Fatal(err)
	}
	got := exchange(t, n, "127.0.0.1:15053", []query{plain})[0]
	m := new(dns.Msg)
	if err := m.Unpack(got); err != nil || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "240.0.0.9" {
		t.Errorf("after the table took fwd.example: %v %v", m, err)
	}
}

// cachedEntry builds the cached answer of name with two A records, as
// the interceptor packs it.
func cachedEntry(t *testing.T, name string, edns bool, ttl uint32) dnsproxy.WireCacheEntry {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Response, m.Authoritative, m.RecursionAvailable, m.RecursionDesired = true, false, true, false
	m.Id = 0
	for _, ip := range []net.IP{net.IPv4(198, 18, 0, 7), net.IPv4(198, 18, 0, 8)} {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: ip})
	}
	if edns {
		m.SetEdns0(1232, false)
	}
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	qlen := len(dns.Fqdn(name)) + 1
	if name == "." {
		qlen = 1
	}
	e := dnsproxy.WireCacheEntry{WireCacheKey: dnsproxy.WireCacheKey{Name: string(b[12 : 12+qlen]), Qtype: dns.TypeA},
		EDNS: edns, Answer: b, QnameLen: qlen, Need: len(b), Stored: time.Now(), Expires: time.Now().Add(time.Minute)}
	// Each A record: pointer (2), type, class, TTL at +6.
	off := 12 + qlen + 4
	for range 2 {
		e.TTLOffsets = append(e.TTLOffsets, uint16(off+6))
		e.TTLs = append(e.TTLs, ttl)
		off += 2 + 10 + 4
	}
	lower := []byte(e.Name)
	for i, c := range lower {
		if c >= 'A' && c <= 'Z' {
			lower[i] = c + 'a' - 'A'
		}
	}
	e.Name = string(lower)
	if binary.BigEndian.Uint16(b[6:]) != 2 {
		t.Fatalf("built %d answers", binary.BigEndian.Uint16(b[6:]))
	}
	return e
}

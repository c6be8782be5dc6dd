package dnsproxy

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// richZone answers any spelling of names under fwd.test. with what makes
// packing interesting: several sections, additional records, upstream EDNS
// options (NSID kept, cookie dropped), NXDOMAIN with an SOA, and a TXT
// answer that fits 1232 bytes but not 512.
func richZone(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	rr := func(s string) dns.RR {
		x, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		return x
	}
	switch {
	case name == "gone.fwd.test.":
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, rr("fwd.test. 300 IN SOA ns.fwd.test. host.fwd.test. 1 60 60 60 60"))
	case q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, rr(q.Name+" 300 IN A 192.0.2.1"), rr(q.Name+" 100 IN A 192.0.2.2"))
		m.Ns = append(m.Ns, rr("fwd.test. 600 IN NS ns.fwd.test."))
		m.Extra = append(m.Extra, rr("ns.fwd.test. 900 IN A 192.0.2.53"))
	case q.Qtype == dns.TypeMX:
		m.Answer = append(m.Answer, rr(q.Name+" 300 IN MX 10 mail.fwd.test."))
	case q.Qtype == dns.TypeTXT:
		for i := 0; i < 6; i++ {
			m.Answer = append(m.Answer, rr(q.Name+` 300 IN TXT "`+strings.Repeat("t", 100)+`"`))
		}
	}
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(1232, opt.Do())
		o := m.IsEdns0()
		o.Option = append(o.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "6e73"},
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708090a0b0c0d0e0f10"})
	}
	_ = w.WriteMsg(m)
}

type wireCase struct {
	name   string
	qtype  uint16
	edns   uint16 // 0: no OPT
	do, cd bool
	rd     bool
	opts   bool // client sends an EDNS option (a cookie)
}

func (c wireCase) pack(id uint16) []byte {
	m := new(dns.Msg)
	m.SetQuestion(c.name, c.qtype)
	m.Id = id
	m.RecursionDesired = c.rd
	m.CheckingDisabled = c.cd
	if c.edns > 0 {
		m.SetEdns0(c.edns, c.do)
		if c.opts {
			o := m.IsEdns0()
			o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "a1b2c3d4e5f60708"})
		}
	}
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return b
}

func newWireServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	cfg.Logger = quiet()
	cfg.Listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}
	if cfg.Cache.Size == 0 {
		cfg.Cache.Size = 1000
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sameAnswer checks that the wire path, when it answers req, gives exactly
// the bytes the slow path gives; it reports whether the wire path answered.
// Both run within the same second of cache age, retried once if a second
// boundary fell between them.
func sameAnswer(t *testing.T, s *Server, req []byte, udp bool) bool {
	t.Helper()
	for try := 0; ; try++ {
		var nb [256]byte
		var q query
		fast, ok := s.fast(req, nil, &nb, &q, udp)
		slow := s.handle(context.Background(), req, !udp)
		if !ok {
			return false
		}
		if bytes.Equal(fast, slow) {
			return true
		}
		if try == 1 {
			var fm, sm dns.Msg
			_ = fm.Unpack(fast)
			_ = sm.Unpack(slow)
			t.Fatalf("wire path differs from slow path (udp %v)\nwire % x\n%v\nslow % x\n%v", udp, fast, &fm, slow, &sm)
		}
	}
}

func TestWireCacheMatchesSlowPath(t *testing.T) {
	up := startUpstream(t, richZone)
	s := newWireServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, Table: meshTable(), Search: []string{"svc.cluster.local"}})
	var cases []wireCase
	for _, name := range []string{"a.fwd.test.", "gone.fwd.test.", "x.svc.cluster.local."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeMX, dns.TypeTXT, dns.TypeAAAA} {
			for _, edns := range []uint16{0, 512, 1232, 4096} {
				for _, flags := range []int{0, 1, 2, 3, 4, 7} {
					c := wireCase{name: name, qtype: qt, edns: edns, do: flags&1 != 0, cd: flags&2 != 0, rd: flags&4 == 0}
					if edns == 0 {
						c.do = false
					}
					c.opts = edns == 1232
					cases = append(cases, c)
				}
			}
		}
	}
	for _, c := range cases {
		// Fill the cache through the slow path, as the first query does.
		if resp := s.handle(context.Background(), c.pack(1), false); resp == nil {
			t.Fatalf("%+v: no answer", c)
		}
	}
	if n := up.queries.Load(); n == 0 || n > int64(len(cases)) {
		t.Fatalf("upstream asked %d times", n)
	}
	wire := 0
	for _, c := range cases {
		for _, udp := range []bool{true, false} {
			req := c.pack(0xbeef)
			if sameAnswer(t, s, req, udp) {
				wire++
			} else if (c.qtype != dns.TypeTXT || c.edns >= 1232 || !udp) && (c.qtype != dns.TypeAAAA || c.name == "gone.fwd.test.") {
				// (NODATA without an SOA, here AAAA, is not cached at all.)
				t.Errorf("%+v udp %v: not answered from the wire cache", c, udp)
			}
		}
	}
	snap := s.Metrics().Snapshot()
	if snap.Queries["A"]["cache"] == 0 || snap.CacheHits == 0 {
		t.Errorf("wire cache hits not counted: %+v", snap.Queries)
	}
	t.Logf("%d of %d answered on the wire path", wire, 2*len(cases))
}

func TestWireCacheFallsBack(t *testing.T) {
	up := startUpstream(t, richZone)
	s := newWireServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, Table: meshTable(), Search: []string{"svc.cluster.local"}})
	ask := func(name string, qt uint16, edns uint16) []byte {
		return wireCase{name: name, qtype: qt, edns: edns, rd: true}.pack(7)
	}
	fast := func(req []byte, udp bool) bool {
		var nb [256]byte
		var q query
		_, ok := s.fast(req, nil, &nb, &q, udp)
		return ok
	}
	// Not cached yet: slow path.
	if fast(ask("b.fwd.test.", dns.TypeA, 0), true) {
		t.Fatal("answered before anything was cached")
	}
	s.handle(context.Background(), ask("b.fwd.test.", dns.TypeA, 0), false)
	if !fast(ask("b.fwd.test.", dns.TypeA, 0), true) {
		t.Fatal("cached answer not served from the wire")
	}
	// Another spelling (0x20 randomisation): compression differs, slow path;
	// its answer echoes the question as asked.
	mixed := ask("B.Fwd.TEST.", dns.TypeA, 0)
	if fast(mixed, true) {
		t.Error("a differently spelled query was answered from another spelling's bytes")
	}
	var m dns.Msg
	if err := m.Unpack(s.handle(context.Background(), mixed, false)); err != nil || m.Question[0].Name != "B.Fwd.TEST." || len(m.Answer) != 2 {
		t.Errorf("mixed-case answer: %v %v", &m, err)
	}
	// Too big for the client's UDP limit: the slow path truncates.
	s.handle(context.Background(), ask("b.fwd.test.", dns.TypeTXT, 1232), false)
	small := ask("b.fwd.test.", dns.TypeTXT, 0)
	if fast(small, true) {
		t.Error("an answer over 512 bytes was sent from the wire path to a client without EDNS0")
	}
	if err := m.Unpack(s.handle(context.Background(), small, false)); err != nil || !m.Truncated {
		t.Errorf("no TC on a truncated answer: %v %v", &m, err)
	}
	if !fast(small, false) {
		t.Error("over TCP the cached answer fits")
	}
	// The table changes so that the search-domain shortcut applies: the
	// cached upstream answer must no longer be served.
	name := "newsvc.mesh.svc.cluster.local."
	s.handle(context.Background(), ask(name, dns.TypeA, 0), false)
	if !fast(ask(name, dns.TypeA, 0), true) {
		t.Fatal("search-domain name not cached")
	}
	s.SetTable(MustTable(map[string][]netip.Addr{"newsvc.mesh": addrs("240.0.9.9")}, TableOptions{}))
	if fast(ask(name, dns.TypeA, 0), true) {
		t.Error("cached answer served where the search-domain shortcut now applies")
	}
	if err := m.Unpack(s.handle(context.Background(), ask(name, dns.TypeA, 0), false)); err != nil || answers(&m) != "CNAME newsvc.mesh. 240.0.9.9" {
		t.Errorf("shortcut answer: %v %v", &m, err)
	}
	// A name now in the table: the table answers, not the cache.
	s.SetTable(MustTable(map[string][]netip.Addr{"b.fwd.test": addrs("240.0.9.8")}, TableOptions{}))
	var nb [256]byte
	var q query
	if resp, ok := s.fast(ask("b.fwd.test.", dns.TypeA, 0), nil, &nb, &q, true); !ok || m.Unpack(resp) != nil || answers(&m) != "240.0.9.8" {
		t.Errorf("table did not take over from the cache: %v", &m)
	}
	// Other policies never reach the cache.
	s.cfg.UnknownNames = UnknownRefused
	if fast(ask("gone.fwd.test.", dns.TypeA, 0), true) {
		t.Error("wire cache answered under the refused policy")
	}
	s.cfg.UnknownNames = UnknownForward
	// Expired entries are the slow path's (it may serve them stale).
	s.handle(context.Background(), ask("c.fwd.test.", dns.TypeA, 0), false)
	var kb [300]byte
	key := appendCacheKey(kb[:0], []byte("\x01c\x03fwd\x04test\x00"), dns.TypeA, dns.ClassINET, false, false)
	if w, _ := s.cache.getWire(key, time.Now().Add(101*time.Second), false); w != nil {
		t.Error("expired entry served from the wire")
	}
	if w, _ := s.cache.getWire(key, time.Now(), false); w == nil {
		t.Error("fresh entry not found")
	}
}

func TestWireCacheAgesTTLs(t *testing.T) {
	up := startUpstream(t, richZone)
	s := newWireServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	req := wireCase{name: "d.fwd.test.", qtype: dns.TypeA, edns: 1232, rd: true}.pack(9)
	s.handle(context.Background(), req, false)
	var kb [300]byte
	key := appendCacheKey(kb[:0], []byte("\x01d\x03fwd\x04test\x00"), dns.TypeA, dns.ClassINET, false, false)
	w, stored := s.cache.getWire(key, time.Now(), true)
	if w == nil {
		t.Fatal("not cached")
	}
	var q query
	var nb [256]byte
	parseQuery(req, &nb, &q)
	out, ok := appendCached(nil, req, &q, w, stored, stored.Add(150*time.Second), 1232)
	var m dns.Msg
	if !ok || m.Unpack(out) != nil {
		t.Fatalf("appendCached: %v", ok)
	}
	var ttls []uint32
	for _, rr := range append(append(m.Answer, m.Ns...), m.Extra...) {
		if rr.Header().Rrtype != dns.TypeOPT {
			ttls = append(ttls, rr.Header().Ttl)
		}
	}
	if len(ttls) != 4 || ttls[0] != 150 || ttls[1] != 0 || ttls[2] != 450 || ttls[3] != 750 {
		t.Errorf("aged TTLs %v, want [150 0 450 750]", ttls)
	}
	if m.Id != 9 || !m.RecursionDesired || m.IsEdns0() == nil || m.IsEdns0().UDPSize() != ednsBufSize {
		t.Errorf("header/OPT: %v", &m)
	}
	for _, o := range m.IsEdns0().Option {
		if o.Option() == dns.EDNS0COOKIE {
			t.Error("upstream cookie passed to the client")
		}
	}
}

// BenchmarkCacheAnswer is a UDP A query for a forwarded name answered from
// the cache on the wire path. It must not allocate.
func BenchmarkCacheAnswer(b *testing.B) {
	s := newWireServer(b, Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}})
	q := wireCase{name: "host-42.fwd.test.", qtype: dns.TypeA, rd: true}
	c := new(dns.Msg)
	_ = c.Unpack(q.pack(1))
	up := new(dns.Msg)
	up.SetReply(c)
	rr, _ := dns.NewRR("host-42.fwd.test. 3600 IN A 198.18.0.42")
	up.Answer = append(up.Answer, rr)
	k, _ := keyFor(q.name, dns.TypeA, dns.ClassINET, false, false)
	s.cache.put(k, up, buildWire(c, up), time.Now())
	req := q.pack(2)
	out := make([]byte, 0, 2048)
	var nb [256]byte
	var qq query
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := s.fast(req, out[:0], &nb, &qq, true); !ok {
			b.Fatal("not answered from the cache")
		}
	}
}

package dnsproxy

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzServeDNS feeds arbitrary bytes through both request paths (the
// wire-level table path and the unpacking one) and checks that every answer
// is a well-formed response to the same ID. Forwarding is turned off by the
// REFUSED policy so that the fuzzer exercises parsing, not the network.
func FuzzServeDNS(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
	}{
		{"httpbin.mesh.", dns.TypeA, false},
		{"HTTPBIN.mesh.", dns.TypeAAAA, true},
		{"x.wild.mesh.", dns.TypeA, true},
		{"httpbin.mesh.svc.cluster.local.", dns.TypeA, false},
		{"nope.mesh.", dns.TypeTXT, true},
		{"example.org.", dns.TypeMX, false},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(1232, true)
		}
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1})
	f.Add(make([]byte, 12))
	s, err := New(Config{Table: meshTable(), UnknownNames: UnknownRefused, Search: []string{"svc.cluster.local"}, Logger: quiet(),
		Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		var nb [256]byte
		var q query
		for _, udp := range []bool{true, false} {
			if resp, ok := s.fast(req, nil, &nb, &q, udp); ok {
				checkResponse(t, req, resp)
			} else if resp := s.handle(context.Background(), req, !udp); resp != nil {
				checkResponse(t, req, resp)
			}
		}
		if s.metrics.panics.Load() != 0 {
			t.Fatalf("panic while answering % x", req)
		}
	})
}

func checkResponse(t *testing.T, req, resp []byte) {
	t.Helper()
	if len(resp) < 12 || resp[0] != req[0] || resp[1] != req[1] || resp[2]&0x80 == 0 {
		t.Fatalf("bad response % x to % x", resp, req)
	}
	if len(resp) > 12 {
		var m dns.Msg
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("response does not unpack: %v\nreq % x\nresp % x", err, req, resp)
		}
	}
}

// FuzzWireCache checks that whatever the wire path answers from the cache,
// the slow path answers with the same bytes.
func FuzzWireCache(f *testing.F) {
	s, err := New(Config{Cache: CacheOptions{Size: 100}, Search: []string{"svc.cluster.local"}, Logger: quiet(),
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}, QueryTimeout: 20 * time.Millisecond,
		Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}})
	if err != nil {
		f.Fatal(err)
	}
	for _, c := range []wireCase{
		{name: "a.fwd.test.", qtype: dns.TypeA, rd: true},
		{name: "a.fwd.test.", qtype: dns.TypeA, edns: 1232, do: true, cd: true},
		{name: "x.svc.cluster.local.", qtype: dns.TypeMX, edns: 512, opts: true},
	} {
		req := c.pack(1)
		var m dns.Msg
		if err := m.Unpack(req); err != nil {
			f.Fatal(err)
		}
		up := new(dns.Msg)
		up.SetReply(&m)
		rr, _ := dns.NewRR(c.name + " 3600 IN A 192.0.2.1")
		up.Answer = append(up.Answer, rr)
		opt := m.IsEdns0()
		k, _ := keyFor(c.name, c.qtype, dns.ClassINET, opt != nil && opt.Do(), m.CheckingDisabled)
		s.cache.put(k, up, buildWire(&m, up), time.Now())
		f.Add(c.pack(2))
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		var nb [256]byte
		var q query
		for _, udp := range []bool{true, false} {
			fast, ok := s.fast(req, nil, &nb, &q, udp)
			if !ok {
				continue
			}
			checkResponse(t, req, fast)
			slow := s.handle(context.Background(), req, !udp)
			if !bytes.Equal(fast, slow) {
				t.Fatalf("wire path and slow path differ for % x:\n% x\n% x", req, fast, slow)
			}
		}
	})
}

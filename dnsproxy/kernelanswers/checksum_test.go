package kernelanswers

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// On lo the kernel never checks a UDP checksum: it leaves them for the
// "hardware" to fill in. A packet the program is run on with
// BPF_PROG_TEST_RUN carries a complete checksum instead, so these tests
// check that every incremental update the program makes to it is right,
// as it must be for a sender that fills in its own.

const tcActOK = 0

// packet builds an Ethernet frame of a UDP datagram from src to dst with
// payload and correct checksums (UDP checksum 0, for IPv4, when noSum).
func packet(src, dst netip.AddrPort, payload []byte, noSum bool) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	var l3 []byte
	eth := make([]byte, 14)
	if src.Addr().Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		l3 = make([]byte, 20)
		l3[0], l3[8], l3[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(l3[2:], uint16(20+len(udp)))
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(l3[12:], s[:])
		copy(l3[16:], d[:])
		binary.BigEndian.PutUint16(l3[10:], ^sum(0, l3))
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		l3 = make([]byte, 40)
		l3[0], l3[6], l3[7] = 0x60, 17, 64
		binary.BigEndian.PutUint16(l3[4:], uint16(len(udp)))
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(l3[8:], s[:])
		copy(l3[24:], d[:])
	}
	if !noSum {
		c := ^sum(pseudo(l3, len(udp)), udp)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(udp[6:], c)
	}
	return append(append(eth, l3...), udp...)
}

// sum is the ones' complement sum of b, added to s.
func sum(s uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// pseudo is the sum of the pseudo-header of a UDP datagram of n bytes in
// the IP packet whose header is l3.
func pseudo(l3 []byte, n int) uint32 {
	var addrs []byte
	if l3[0]>>4 == 4 {
		addrs = l3[12:20]
	} else {
		addrs = l3[8:40]
	}
	return uint32(sum(0, addrs)) + 17 + uint32(n)
}

// TestAnswerChecksums runs the program on queries with complete checksums
// and checks the answers it makes: IP and UDP checksums right, addresses
// and ports swapped, lengths right, and the DNS answer the table's.
func TestAnswerChecksums(t *testing.T) {
	testenv.RequireRoot(t)
	a, err := Load(listen)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Sync(table(t)); err != nil {
		t.Fatal(err)
	}
	// Cached answers whose question ends at an odd (fwd.example) and an
	// even (fwd.examples) offset, for clients with and without EDNS.
	for _, name := range []string{"fwd.example.", "fwd.examples."} {
		for _, e := range []bool{false, true} {
			a.CacheObserver().CacheStored(cachedEntry(t, name, e, 300))
		}
	}
	if a.CachedAnswers() != 4 {
		t.Fatalf("the kernel holds %d cached answers, want 4", a.CachedAnswers())
	}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
	client4, server4 := netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("127.0.0.1:15053")
	client6, server6 := netip.MustParseAddrPort("[::1]:40001"), netip.MustParseAddrPort("[::1]:15053")
	cases := []struct {
		name   string
		msg    func() *dns.Msg
		want   []string
		client netip.AddrPort
		server netip.AddrPort
		noSum  bool
	}{
		// httpbin.mesh: the question ends at an even offset;
		// backend.ns.svc.x at an odd one.
		{"even question end", q("httpbin.mesh.", dns.TypeA), []string{"240.0.0.1"}, client4, server4, false},
		{"odd question end", q("backend.ns.svc.x.", dns.TypeA), []string{"240.0.0.6"}, client4, server4, false},
		{"EDNS, even", q("httpbin.mesh.", dns.TypeA, edns(true)), []string{"240.0.0.1"}, client4, server4, false},
		{"EDNS cookie, odd", q("backend.ns.svc.x.", dns.TypeA, edns(false, cookie)), []string{"240.0.0.6"}, client4, server4, false},
		{"twelve records", q("twelve.mesh.", dns.TypeA), nil, client4, server4, false},
		{"no records", q("httpbin.mesh.", dns.TypeAAAA), []string{}, client4, server4, false},
		{"IPv4 without a UDP checksum", q("httpbin.mesh.", dns.TypeA, edns(false, cookie)), []string{"240.0.0.1"}, client4, server4, true},
		{"IPv6 AAAA, even", q("httpbin.org.", dns.TypeAAAA), []string{"fd00:f0::2"}, client6, server6, false},
		{"IPv6 odd, EDNS cookie", q("backend.ns.svc.x.", dns.TypeA, edns(false, cookie)), []string{"240.0.0.6"}, client6, server6, false},
		{"cached, odd", q("fwd.example.", dns.TypeA), []string{"198.18.0.7", "198.18.0.8"}, client4, server4, false},
		{"cached, even", q("fwd.examples.", dns.TypeA), []string{"198.18.0.7", "198.18.0.8"}, client4, server4, false},
		{"cached EDNS cookie, odd", q("fwd.example.", dns.TypeA, edns(false, cookie)), []string{"198.18.0.7", "198.18.0.8"}, client4, server4, false},
		{"cached EDNS, even", q("fwd.examples.", dns.TypeA, edns(false)), []string{"198.18.0.7", "198.18.0.8"}, client4, server4, false},
		{"cached, IPv4 without a UDP checksum", q("fwd.example.", dns.TypeA), []string{"198.18.0.7", "198.18.0.8"}, client4, server4, true},
		{"cached IPv6, odd", q("fwd.example.", dns.TypeA), []string{"198.18.0.7", "198.18.0.8"}, client6, server6, false},
		{"cached IPv6 EDNS, even", q("fwd.examples.", dns.TypeA, edns(false)), []string{"198.18.0.7", "198.18.0.8"}, client6, server6, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := c.msg()
			b, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			in := packet(c.client, c.server, b, c.noSum)
			opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, 1500)}
			ret, err := a.Program().Run(opts)
			out := opts.DataOut
			if err != nil {
				t.Fatal(err)
			}
			if ret != tcActOK {
				t.Fatalf("program returned %d", ret)
			}
			l3 := out[14:]
			var udp []byte
			if c.client.Addr().Is4() {
				if sum(0, l3[:20]) != 0xffff {
					t.Errorf("IPv4 header checksum wrong: %x", l3[:20])
				}
				if n := int(binary.BigEndian.Uint16(l3[2:])); n != len(l3) {
					t.Errorf("IPv4 total length %d, packet %d", n, len(l3))
				}
				if netip.AddrFrom4([4]byte(l3[12:16])) != c.server.Addr() || netip.AddrFrom4([4]byte(l3[16:20])) != c.client.Addr() {
					t.Errorf("addresses %x, want from the server to the client", l3[12:20])
				}
				udp = l3[20:]
			} else {
				if n := int(binary.BigEndian.Uint16(l3[4:])); n != len(l3)-40 {
					t.Errorf("IPv6 payload length %d, packet %d", n, len(l3)-40)
				}
				if netip.AddrFrom16([16]byte(l3[8:24])) != c.server.Addr() || netip.AddrFrom16([16]byte(l3[24:40])) != c.client.Addr() {
					t.Errorf("addresses %x, want from the server to the client", l3[8:40])
				}
				udp = l3[40:]
			}
			if binary.BigEndian.Uint16(udp[0:]) != c.server.Port() || binary.BigEndian.Uint16(udp[2:]) != c.client.Port() {
				t.Errorf("ports %x, want %d -> %d", udp[:4], c.server.Port(), c.client.Port())
			}
			if n := int(binary.BigEndian.Uint16(udp[4:])); n != len(udp) {
				t.Errorf("UDP length %d, datagram %d", n, len(udp))
			}
			switch got := binary.BigEndian.Uint16(udp[6:]); {
			case c.noSum && got != 0:
				t.Errorf("UDP checksum %#x, want 0 (none) as the query had", got)
			case !c.noSum && sum(pseudo(l3, len(udp)), udp) != 0xffff:
				t.Errorf("UDP checksum %#x is wrong", got)
			}
			r := new(dns.Msg)
			if err := r.Unpack(udp[8:]); err != nil {
				t.Fatal(err)
			}
			if r.Id != m.Id || !r.Response || len(r.Question) != 1 || r.Question[0] != m.Question[0] {
				t.Errorf("answer header or question wrong: %v", r)
			}
			if table := !strings.HasPrefix(c.name, "cached"); r.Authoritative != table {
				t.Errorf("AA %v, want %v (table answers are authoritative, cached ones as the upstream's)", r.Authoritative, table)
			}
			if (m.IsEdns0() != nil) != (r.IsEdns0() != nil) {
				t.Errorf("EDNS in the query %v, in the answer %v", m.IsEdns0() != nil, r.IsEdns0() != nil)
			}
			if c.want == nil {
				if len(r.Answer) != 12 {
					t.Errorf("%d records, want 12", len(r.Answer))
				}
				return
			}
			var got []string
			for _, rr := range r.Answer {
				switch rr := rr.(type) {
				case *dns.A:
					got = append(got, rr.A.String())
				case *dns.AAAA:
					got = append(got, rr.AAAA.String())
				}
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Errorf("records %v, want %v", got, c.want)
			}
		})
	}
}

package nftables

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
)

// referenceAddrSet is newAddrSet as it was written first, on byte slices.
func referenceAddrSet(name string, f fam, prefixes []netip.Prefix) *set {
	s := &set{name: name, kind: kindAddr4, interval: true}
	n := 4
	if f.v6 {
		s.kind, n = kindAddr6, 16
	}
	// One buffer for the family's keys alone: a long list of one family
	// costs the other family's set nothing.
	count := 0
	for _, p := range prefixes {
		if p.Addr().Unmap().Is6() == f.v6 {
			count++
		}
	}
	buf := make([]byte, 2*n*count)
	spans := make([]span, 0, count)
	for _, p := range prefixes {
		if p.Addr().Unmap().Is6() == f.v6 {
			i := len(spans)
			spans = append(spans, referenceSpanIn(buf[2*n*i:2*n*(i+1)], p, n))
		}
	}
	spans = merge(spans)
	s.text = func() []string {
		out := make([]string, len(spans))
		for i, sp := range spans {
			out[i] = addrSpanText(sp)
		}
		return out
	}
	s.elems = intervalElements(spans)
	return s
}

// referenceSpanIn is the span of a prefix, its keys (n bytes each) in buf.
func referenceSpanIn(buf []byte, p netip.Prefix, n int) span {
	p = p.Masked()
	a := p.Addr()
	lo, hi := buf[:n:n], buf[n:2*n:2*n]
	if n == 4 {
		b := a.Unmap().As4()
		copy(lo, b[:])
	} else {
		b := a.As16()
		copy(lo, b[:])
	}
	copy(hi, lo)
	bits := p.Bits()
	if p.Addr().Is4In6() && n == 4 {
		bits -= 96
	}
	for bit := bits; bit < n*8; bit++ {
		hi[bit/8] |= 0x80 >> (bit % 8)
	}
	return span{lo: lo, hi: hi}
}

// newAddrSet sorts and merges as numbers what referenceAddrSet does as
// bytes: the same elements for random lists of both families, IPv4-mapped
// prefixes, overlaps, neighbours and the whole space.
func TestAddrSetIsTheReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func() netip.Prefix {
		switch rng.IntN(4) {
		case 0:
			a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
			return netip.PrefixFrom(a, 16+rng.IntN(17))
		case 1:
			a := netip.AddrFrom4([4]byte{byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
			return netip.PrefixFrom(a, rng.IntN(33))
		case 2:
			var b [16]byte
			b[0], b[1], b[7], b[8], b[15] = 0xfd, byte(rng.IntN(2)), byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))
			return netip.PrefixFrom(netip.AddrFrom16(b), rng.IntN(129))
		default:
			a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), 0})
			return netip.PrefixFrom(netip.AddrFrom16(a.As16()), 96+8+rng.IntN(25))
		}
	}
	for round := 0; round < 2000; round++ {
		var ps []netip.Prefix
		for range rng.IntN(40) {
			ps = append(ps, random())
		}
		if round%50 == 0 {
			ps = append(ps, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
		}
		for _, f := range []fam{{}, {v6: true}} {
			got, want := newAddrSet("s", f, slices.Clone(ps)), referenceAddrSet("s", f, slices.Clone(ps))
			if !slices.EqualFunc(got.elems, want.elems, func(a, b nftables.SetElement) bool {
				return bytes.Equal(a.Key, b.Key) && a.IntervalEnd == b.IntervalEnd
			}) {
				t.Fatalf("%v (v6 %v): %v, want %v", ps, f.v6, got.text(), want.text())
			}
			if !slices.Equal(got.text(), want.text()) {
				t.Fatalf("%v (v6 %v): text %v, want %v", ps, f.v6, got.text(), want.text())
			}
		}
	}
}

func BenchmarkAddrSet(b *testing.B) {
	var ps []netip.Prefix
	for i := 0; i < 10000; i++ {
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}), 32))
	}
	b.ReportAllocs()
	for b.Loop() {
		newAddrSet("x", fam{}, ps)
	}
}

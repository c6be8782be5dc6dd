package nftables

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
)

// referenceSpans are an address set's spans as newAddrSet first computed
// them, on byte slices: each prefix's span, merged by merge.
func referenceSpans(f fam, prefixes []netip.Prefix) []span {
	n := 4
	if f.v6 {
		n = 16
	}
	var spans []span
	for _, p := range prefixes {
		if p.Addr().Unmap().Is6() != f.v6 {
			continue
		}
		p = p.Masked()
		lo, hi := make([]byte, n), make([]byte, n)
		if n == 4 {
			b := p.Addr().Unmap().As4()
			copy(lo, b[:])
		} else {
			b := p.Addr().As16()
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
		spans = append(spans, span{lo: lo, hi: hi})
	}
	return merge(spans)
}

// newAddrSet sorts and merges as numbers what referenceSpans does as
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
			got, spans := newAddrSet("s", f, slices.Clone(ps)), referenceSpans(f, ps)
			if want := intervalElements(spans); !slices.EqualFunc(got.elems, want, func(a, b nftables.SetElement) bool {
				return bytes.Equal(a.Key, b.Key) && a.IntervalEnd == b.IntervalEnd
			}) {
				t.Fatalf("%v (v6 %v): %v, want %v", ps, f.v6, got.elems, want)
			}
			var want []string
			for _, sp := range spans {
				want = append(want, addrSpanText(sp))
			}
			if text := got.text(); !slices.Equal(text, want) {
				t.Fatalf("%v (v6 %v): text %v, want %v", ps, f.v6, text, want)
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

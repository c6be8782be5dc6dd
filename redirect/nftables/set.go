package nftables

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// setKind is the key type of one of shunt's sets.
type setKind int

const (
	kindAddr4 setKind = iota
	kindAddr6
	kindPort
	kindEndpoint4
	kindEndpoint6
)

func (k setKind) typeText() string {
	switch k {
	case kindAddr4:
		return "ipv4_addr"
	case kindAddr6:
		return "ipv6_addr"
	case kindPort:
		return "inet_service"
	case kindEndpoint4:
		return "ipv4_addr . inet_service"
	default:
		return "ipv6_addr . inet_service"
	}
}

func (k setKind) keyType() nftables.SetDatatype {
	switch k {
	case kindAddr4:
		return nftables.TypeIPAddr
	case kindAddr6:
		return nftables.TypeIP6Addr
	case kindPort:
		return nftables.TypeInetService
	case kindEndpoint4:
		return nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	default:
		return nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
	}
}

// set is one named set of shunt's table with its elements, both as nft
// prints them and as the keys sent to the kernel.
type set struct {
	name     string
	id       uint32
	kind     setKind
	interval bool
	// text prints the elements as nft does; computed only for --dry-run.
	text  func() []string
	elems []nftables.SetElement
}

// span is an inclusive range of big-endian keys of one length.
type span struct{ lo, hi []byte }

// merge sorts spans and joins those that overlap or touch: the kernel
// refuses overlapping intervals, and touching ones are one interval.
func merge(spans []span) []span {
	slices.SortFunc(spans, func(a, b span) int {
		if c := bytes.Compare(a.lo, b.lo); c != 0 {
			return c
		}
		return bytes.Compare(a.hi, b.hi)
	})
	var out []span
	for _, s := range spans {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if reaches(last.hi, s.lo) {
				if bytes.Compare(s.hi, last.hi) > 0 {
					last.hi = s.hi
				}
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

// reaches reports whether lo is at most hi+1: a span starting at lo
// overlaps or touches one ending at hi.
func reaches(hi, lo []byte) bool {
	if bytes.Compare(lo, hi) <= 0 {
		return true
	}
	// lo == hi+1: from the right, hi's trailing 0xff bytes are lo's 0x00,
	// then one byte one higher, then equal bytes.
	i := len(hi) - 1
	for i >= 0 && hi[i] == 0xff && lo[i] == 0 {
		i--
	}
	return i >= 0 && lo[i] == hi[i]+1 && bytes.Equal(lo[:i], hi[:i])
}

// intervalElements turns merged spans into the element list nft sends for
// an interval set: an interval-end element at zero when the first span
// does not start there, then each span's start and the key after its end.
func intervalElements(spans []span) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(spans)+1)
	if len(spans) > 0 && !isZero(spans[0].lo) {
		out = append(out, nftables.SetElement{Key: make([]byte, len(spans[0].lo)), IntervalEnd: true})
	}
	var arena []byte
	if len(spans) > 0 {
		arena = make([]byte, 0, len(spans)*len(spans[0].hi))
	}
	for _, s := range spans {
		out = append(out, nftables.SetElement{Key: s.lo})
		start := len(arena)
		arena = append(arena, s.hi...)
		end := arena[start:len(arena):len(arena)]
		if increment(end) {
			out = append(out, nftables.SetElement{Key: end, IntervalEnd: true})
		}
	}
	return out
}

// increment adds one to b in place; false when it overflowed.
func increment(b []byte) bool {
	for i := len(b) - 1; i >= 0; i-- {
		b[i]++
		if b[i] != 0 {
			return true
		}
	}
	return false
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func addrOf(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}

// addrSpanText prints a span as nft does: an address, a prefix, or a range.
func addrSpanText(s span) string {
	lo, hi := addrOf(s.lo), addrOf(s.hi)
	if lo == hi {
		return lo.String()
	}
	if bits, ok := prefixLen(s); ok {
		return netip.PrefixFrom(lo, bits).String()
	}
	return lo.String() + "-" + hi.String()
}

// prefixLen reports whether a span is exactly one prefix, and its length:
// equal leading bits, then lo all zeros and hi all ones.
func prefixLen(s span) (int, bool) {
	i := 0
	for i < len(s.lo)*8 && bit(s.lo, i) == bit(s.hi, i) {
		i++
	}
	for j := i; j < len(s.lo)*8; j++ {
		if bit(s.lo, j) != 0 || bit(s.hi, j) != 1 {
			return 0, false
		}
	}
	return i, true
}

func bit(b []byte, i int) byte { return b[i/8] >> (7 - i%8) & 1 }

// newAddrSet is an interval set of prefixes of one family. The prefixes
// are sorted and merged as numbers, not byte slices: a list of 10,000
// took 0.6 ms to render that way, and every change of the list renders it
// (BenchmarkAddrSet).
func newAddrSet(name string, f fam, prefixes []netip.Prefix) *set {
	s := &set{name: name, kind: kindAddr4, interval: true}
	n := 4
	if f.v6 {
		s.kind, n = kindAddr6, 16
	}
	count := 0
	for _, p := range prefixes {
		if inFamily(p, f.v6) {
			count++
		}
	}
	ranges := make([]addrRange, 0, count)
	for _, p := range prefixes {
		if inFamily(p, f.v6) {
			ranges = append(ranges, rangeOf(p, f.v6))
		}
	}
	ranges = mergeRanges(ranges)
	// One buffer for the family's keys alone: a long list of one family
	// costs the other family's set nothing.
	buf := make([]byte, 2*n*len(ranges))
	spans := make([]span, len(ranges))
	for i, r := range ranges {
		k := buf[2*n*i : 2*n*(i+1)]
		spans[i] = span{lo: r.lo.put(k[:n:n]), hi: r.hi.put(k[n : 2*n : 2*n])}
	}
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

// addrKey is an address as a 128-bit number (an IPv4 address in the low
// 32 bits).
type addrKey struct{ hi, lo uint64 }

func (a addrKey) compare(b addrKey) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

// put writes the key big-endian into b (4 or 16 bytes) and returns b.
func (a addrKey) put(b []byte) []byte {
	if len(b) == 4 {
		binary.BigEndian.PutUint32(b, uint32(a.lo))
		return b
	}
	binary.BigEndian.PutUint64(b[:8], a.hi)
	binary.BigEndian.PutUint64(b[8:], a.lo)
	return b
}

// addrRange is an inclusive range of addresses.
type addrRange struct{ lo, hi addrKey }

// inFamily: p belongs in the IPv6 set (v6) or the IPv4 one. An
// IPv4-mapped IPv6 prefix is the IPv4 prefix it maps.
func inFamily(p netip.Prefix, v6 bool) bool { return p.Addr().Unmap().Is6() == v6 }

// rangeOf is the range of a prefix of the family (v6 or not: inFamily).
func rangeOf(p netip.Prefix, v6 bool) addrRange {
	p = p.Masked()
	a := p.Addr()
	bits := p.Bits()
	if !v6 {
		if a.Is4In6() {
			bits = max(bits-96, 0)
		}
		b := a.Unmap().As4()
		lo := uint64(binary.BigEndian.Uint32(b[:]))
		host := uint64(1)<<(32-bits) - 1
		return addrRange{lo: addrKey{lo: lo}, hi: addrKey{lo: lo | host}}
	}
	b := a.As16()
	lo := addrKey{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
	hi := lo
	// A shift by 64 or more is zero in Go: /64 and /128 set no bits.
	if bits <= 64 {
		hi.hi |= ^uint64(0) >> bits
		hi.lo = ^uint64(0)
	} else {
		hi.lo |= ^uint64(0) >> (bits - 64)
	}
	return addrRange{lo: lo, hi: hi}
}

// mergeRanges sorts ranges and joins those that overlap or touch, as
// merge does spans.
func mergeRanges(rs []addrRange) []addrRange {
	slices.SortFunc(rs, func(a, b addrRange) int {
		if c := a.lo.compare(b.lo); c != 0 {
			return c
		}
		return a.hi.compare(b.hi)
	})
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if r.lo.compare(last.hi) <= 0 || r.lo == last.hi.next() {
				if r.hi.compare(last.hi) > 0 {
					last.hi = r.hi
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// next is a+1; the greatest key's next is zero, which no range's start
// after it can equal, since it sorts first.
func (a addrKey) next() addrKey {
	a.lo++
	if a.lo == 0 {
		a.hi++
	}
	return a
}

// newHostSet is a plain set of addresses of one family.
func newHostSet(name string, f fam, addrs []netip.Addr) *set {
	s := &set{name: name, kind: kindAddr4}
	if f.v6 {
		s.kind = kindAddr6
	}
	var keys [][]byte
	for _, a := range addrs {
		if a.Unmap().Is6() == f.v6 {
			keys = append(keys, f.addrBytes(a))
		}
	}
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)
	s.text = func() []string {
		out := make([]string, len(keys))
		for i, k := range keys {
			out[i] = addrOf(k).String()
		}
		return out
	}
	for _, k := range keys {
		s.elems = append(s.elems, nftables.SetElement{Key: k})
	}
	return s
}

// portRange is an inclusive range of ports.
type portRange struct{ first, last uint16 }

func (r portRange) String() string {
	if r.first == r.last {
		return fmt.Sprint(r.first)
	}
	return fmt.Sprintf("%d-%d", r.first, r.last)
}

// idRange is an inclusive range of user or group ids.
type idRange struct{ first, last uint32 }

// newPortSet is an interval set of ports.
func newPortSet(name string, ranges []portRange) *set {
	s := &set{name: name, kind: kindPort, interval: true}
	var spans []span
	for _, r := range ranges {
		spans = append(spans, span{lo: be16(r.first), hi: be16(r.last)})
	}
	spans = merge(spans)
	s.text = func() []string {
		out := make([]string, len(spans))
		for i, sp := range spans {
			out[i] = portRange{binary.BigEndian.Uint16(sp.lo), binary.BigEndian.Uint16(sp.hi)}.String()
		}
		return out
	}
	s.elems = intervalElements(spans)
	return s
}

// newEndpointSet is a set of address . TCP port pairs. A concatenation's
// fields are each padded to 32 bits.
func newEndpointSet(name string, f fam, eps []netip.AddrPort) *set {
	s := &set{name: name, kind: kindEndpoint4}
	if f.v6 {
		s.kind = kindEndpoint6
	}
	var keys [][]byte
	for _, ep := range eps {
		if ep.Addr().Unmap().Is6() != f.v6 {
			continue
		}
		k := append(f.addrBytes(ep.Addr()), be16(ep.Port())...)
		keys = append(keys, append(k, 0, 0))
	}
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)
	n := f.addrLen()
	s.text = func() []string {
		out := make([]string, len(keys))
		for i, k := range keys {
			out[i] = fmt.Sprintf("%s . %d", addrOf(k[:n]), binary.BigEndian.Uint16(k[n:n+2]))
		}
		return out
	}
	for _, k := range keys {
		s.elems = append(s.elems, nftables.SetElement{Key: k})
	}
	return s
}

// elementText prints a key read back from the kernel, for drift reports.
func elementText(k setKind, e nftables.SetElement) string {
	var s string
	switch k {
	case kindAddr4, kindAddr6:
		s = addrOf(e.Key).String()
	case kindPort:
		if len(e.Key) >= 2 {
			s = fmt.Sprint(binary.BigEndian.Uint16(e.Key))
		}
	default:
		n := 4
		if k == kindEndpoint6 {
			n = 16
		}
		if len(e.Key) >= n+2 {
			s = fmt.Sprintf("%s . %d", addrOf(e.Key[:n]), binary.BigEndian.Uint16(e.Key[n:n+2]))
		}
	}
	if s == "" {
		s = fmt.Sprintf("%x", e.Key)
	}
	if e.IntervalEnd {
		return "end " + s
	}
	return s
}

func (s *set) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.name, s.kind.typeText())
	if s.interval {
		b.WriteString("\t\tflags interval\n")
	}
	if t := s.text(); len(t) > 0 {
		fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(t, ", "))
	}
	b.WriteString("\t}\n")
	return b.String()
}

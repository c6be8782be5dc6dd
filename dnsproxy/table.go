package dnsproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/wire"
)

// DefaultTTL is the TTL of table answers when TableOptions.TTL is zero:
// short, so that a VIP change reaches clients quickly, long enough that a
// busy client does not ask for every connection.
const DefaultTTL = wire.MeshNameTTL

// TableOptions tune how a Table answers.
type TableOptions struct {
	TTL time.Duration // TTL of A/AAAA answers; DefaultTTL when zero
}

// Table maps fully qualified names, and wildcards such as *.example.com, to
// VIPs. It is immutable once built: every answer is packed when the table is
// made, so that answering costs a map lookup and a copy, and a Server swaps
// whole tables so that a query never sees half of one.
type Table struct {
	exact map[string]*entry // key: lower-case wire-format name
	wild  map[string]*entry // key: wire-format suffix after "*."
	ttl   uint32
	names int
}

type entry struct {
	name string // presentation form, lower case, fully qualified
	v4   []netip.Addr
	v6   []netip.Addr
	// Answer RRs packed with their owner as a compression pointer to the
	// question (offset 12), so they fit any spelling of the asked name.
	packedA, packedAAAA []byte
}

// NewTable validates entries and builds a Table. Names are case-insensitive
// and may be given with or without the trailing dot; IPv4-mapped IPv6
// addresses count as IPv4. Every invalid name or address is reported, each
// naming the name and the value.
func NewTable(entries map[string][]netip.Addr, opts TableOptions) (*Table, error) {
	ttl := opts.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < time.Second || ttl > 24*time.Hour {
		return nil, fmt.Errorf("table TTL %v: must be between 1s and 24h", opts.TTL)
	}
	t := &Table{
		exact: make(map[string]*entry, len(entries)),
		wild:  make(map[string]*entry),
		ttl:   uint32(ttl / time.Second),
	}
	var errs []error
	var buf [256]byte
	for name, addrs := range entries {
		fq := strings.ToLower(dns.Fqdn(strings.TrimSpace(name)))
		wildcard := strings.HasPrefix(fq, "*.")
		base := fq
		if wildcard {
			base = fq[2:]
		}
		if _, ok := dns.IsDomainName(base); !ok || base == "." || strings.Contains(base, "*") || strings.ContainsAny(base, " \\\t") {
			errs = append(errs, fmt.Errorf("name %q: not a valid domain name (a wildcard may only be a leading \"*.\")", name))
			continue
		}
		if len(addrs) == 0 {
			errs = append(errs, fmt.Errorf("name %q: no addresses", name))
			continue
		}
		e := &entry{name: fq}
		bad := false
		for _, a := range addrs {
			if !a.IsValid() || a.IsUnspecified() {
				errs = append(errs, fmt.Errorf("name %q: address %q is not a usable IP address", name, a.String()))
				bad = true
				continue
			}
			a = a.WithZone("")
			// Lists are short: a linear scan beats a map per name.
			if slices.Contains(e.v4, a) || slices.Contains(e.v6, a) {
				continue
			}
			if a.Is4() {
				e.v4 = append(e.v4, a)
			} else {
				e.v6 = append(e.v6, a)
			}
		}
		if bad {
			continue
		}
		e.packedA = packAddrs(e.v4, t.ttl)
		e.packedAAAA = packAddrs(e.v6, t.ttl)
		n, err := dns.PackDomainName(base, buf[:], 0, nil, false)
		if err != nil {
			errs = append(errs, fmt.Errorf("name %q: %w", name, err))
			continue
		}
		key := string(buf[:n])
		m := t.exact
		if wildcard {
			m = t.wild
		}
		if _, dup := m[key]; dup {
			errs = append(errs, fmt.Errorf("name %q: given twice (names are case-insensitive)", name))
			continue
		}
		m[key] = e
		t.names++
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("build DNS table: %w", errors.Join(errs...))
	}
	return t, nil
}

// MustTable is NewTable for tests and literals; it panics on error.
func MustTable(entries map[string][]netip.Addr, opts TableOptions) *Table {
	t, err := NewTable(entries, opts)
	if err != nil {
		panic(err)
	}
	return t
}

// Len is the number of names, wildcards included.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return t.names
}

// Lookup returns the addresses the table gives name, and whether it knows it.
func (t *Table) Lookup(name string) (v4, v6 []netip.Addr, ok bool) {
	var buf [256]byte
	n, err := dns.PackDomainName(strings.ToLower(dns.Fqdn(name)), buf[:], 0, nil, false)
	if err != nil {
		return nil, nil, false
	}
	e := t.lookupWire(buf[:n])
	if e == nil {
		return nil, nil, false
	}
	return e.v4, e.v6, true
}

// lookupWire finds the entry for a lower-case wire-format name: an exact
// name first, then the closest wildcard. It does not allocate.
// WireEntry is one exact (not wildcard) name of a table with the answer
// records the interceptor sends for it, packed as they go on the wire:
// what the kernel answerer (dnsproxy/kernelanswers) is given to send in
// its place. The slices belong to the table and must not be changed.
type WireEntry struct {
	Name string // lower-case wire form
	// A and AAAA are the packed records (owner a pointer to the
	// question), ACount and AAAACount how many each holds.
	A, AAAA           []byte
	ACount, AAAACount int
}

// WireEntries yields every exact name of the table, in no set order.
// Wildcards are left out: a name they cover is answered by looking up each
// of its suffixes, which is the interceptor's job.
func (t *Table) WireEntries() iter.Seq[WireEntry] {
	return func(yield func(WireEntry) bool) {
		if t == nil {
			return
		}
		for k, e := range t.exact {
			if !yield(WireEntry{Name: k, A: e.packedA, AAAA: e.packedAAAA, ACount: len(e.v4), AAAACount: len(e.v6)}) {
				return
			}
		}
	}
}

func (t *Table) lookupWire(name []byte) *entry {
	if t == nil {
		return nil
	}
	if e, ok := t.exact[string(name)]; ok {
		return e
	}
	if len(t.wild) == 0 {
		return nil
	}
	// A wildcard covers names at any depth below it; the longest suffix wins.
	for off := 0; off < len(name) && name[off] != 0; {
		off += int(name[off]) + 1
		if e, ok := t.wild[string(name[off:])]; ok {
			return e
		}
	}
	return nil
}

func packAddrs(addrs []netip.Addr, ttl uint32) []byte {
	var out []byte
	for _, a := range addrs {
		b := a.AsSlice()
		typ := dns.TypeA
		if len(b) == 16 {
			typ = dns.TypeAAAA
		}
		out = append(out, 0xc0, 0x0c)
		out = binary.BigEndian.AppendUint16(out, typ)
		out = binary.BigEndian.AppendUint16(out, dns.ClassINET)
		out = binary.BigEndian.AppendUint32(out, ttl)
		out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
		out = append(out, b...)
	}
	return out
}

// rrs builds the A or AAAA records of e owned by owner, for the slow path.
func (e *entry) rrs(owner string, qtype uint16, ttl uint32) []dns.RR {
	var out []dns.RR
	hdr := dns.RR_Header{Name: owner, Rrtype: qtype, Class: dns.ClassINET, Ttl: ttl}
	switch qtype {
	case dns.TypeA:
		for _, a := range e.v4 {
			b := a.As4()
			out = append(out, &dns.A{Hdr: hdr, A: b[:]})
		}
	case dns.TypeAAAA:
		for _, a := range e.v6 {
			b := a.As16()
			out = append(out, &dns.AAAA{Hdr: hdr, AAAA: b[:]})
		}
	}
	return out
}

// Package kernelanswers answers DNS queries for the interceptor's table
// names in the kernel, from a tc program on the workload's loopback
// (bpf/dns_answer.c), so that the interceptor is not woken for them: at a
// steady query rate, what a query costs the interceptor is mostly its
// wake-up, and an answer from the kernel has none.
//
// The program answers exactly what the interceptor's fast path answers from
// its table, byte for byte, and leaves every other query to it untouched.
// An Answerer loads the program and keeps its names map equal to a
// dnsproxy.Table; Attach puts the program on a network namespace's lo.
// docs/dns.md describes where it fits and what it leaves to the
// interceptor.
package kernelanswers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/shunt-dev/shunt/dnsproxy"
)

// Limits of what the kernel answers; anything over them is the
// interceptor's. They are the program's (bpf/dns_answer.h).
const (
	// MaxNameLen is the longest name answered, in wire form.
	MaxNameLen = 128
	// MaxRecordBytes is the most packed records of one type per name:
	// 12 A or 6 AAAA records.
	MaxRecordBytes = 192
	// MaxNames is the most names the kernel holds; with more, the
	// others are the interceptor's.
	MaxNames = 65536
)

// Answerer is the loaded program and its maps.
type Answerer struct {
	objs answerObjects
	// written holds, by name (lower-case wire form), a digest of each
	// entry the names map holds, so that a table change writes only the
	// names it changed, and the Sync that last saw it.
	written map[string]*heldName
	syncs   uint64
	// key and value are put's, reused: an entry passed to the map by
	// pointer is copied from in place, and a first Sync writes many.
	key   answerNameKey
	value answerNameAnswers
	cache cacheState
}

// Load loads the program, to answer queries to the interceptor's listen
// addresses: all on loopback (the program sits on lo) and on one port, at
// most one of them IPv4 (the IPv6 one is ::1). Nothing is answered until
// Sync or the cache observer gives it names, nor anywhere until Attach.
func Load(listen []netip.AddrPort) (*Answerer, error) {
	cfg, err := configFor(listen)
	if err != nil {
		return nil, fmt.Errorf("load kernel DNS answers: %w", err)
	}
	a := &Answerer{written: map[string]*heldName{}, cache: cacheState{held: map[answerCacheKey]struct{}{}}}
	if err := loadAnswerObjects(&a.objs, nil); err != nil {
		return nil, fmt.Errorf("load kernel DNS answers: %w", err)
	}
	if err := a.objs.Config.Put(uint32(0), cfg); err != nil {
		a.objs.Close()
		return nil, fmt.Errorf("load kernel DNS answers: configure %v: %w", listen, err)
	}
	return a, nil
}

const configIPv6 = 1 << 0

func configFor(listen []netip.AddrPort) (answerAnswerConfig, error) {
	var cfg answerAnswerConfig
	if len(listen) == 0 {
		return cfg, errors.New("no listen address")
	}
	for _, ap := range listen {
		a := ap.Addr().Unmap()
		switch {
		case !a.IsLoopback():
			return cfg, fmt.Errorf("listen address %s is not on loopback: the program answers on lo only", ap)
		case ap.Port() == 0:
			return cfg, fmt.Errorf("listen address %s: give the port", ap)
		case ap.Port() != listen[0].Port():
			return cfg, fmt.Errorf("listen addresses %s and %s are on different ports: the program answers on one", listen[0], ap)
		case a.Is4():
			b := a.As4()
			v := binary.NativeEndian.Uint32(b[:]) // as the packet holds it
			if cfg.Ipv4 != 0 && cfg.Ipv4 != v {
				return cfg, fmt.Errorf("listen addresses %v: want at most one IPv4 address", listen)
			}
			cfg.Ipv4 = v
		default:
			cfg.Flags |= configIPv6
		}
	}
	cfg.Port = listen[0].Port()
	return cfg, nil
}

// Program is the tc program, for Attach.
func (a *Answerer) Program() *ebpf.Program { return a.objs.DnsAnswer }

// Close releases the program and maps; an attached program stays until it
// is detached.
func (a *Answerer) Close() error { return a.objs.Close() }

// SyncResult says what a Sync changed.
type SyncResult struct {
	// Names is how many of the table's names the kernel answers now.
	Names int
	// Written and Deleted are the map entries changed.
	Written, Deleted int
	// Left lists why names stayed with the interceptor, with a count
	// each ("name longer than 128 bytes": 2).
	Left map[string]int
}

type heldName struct {
	digest uint64
	sync   uint64
}

// Sync makes the kernel answer t's names, and no others. Entries are
// written one by one, each atomically: during a Sync a query sees a name's
// old answer or its new one, never half of either. A name the kernel
// cannot answer (see the limits) is left to the interceptor, which answers
// it from the same table. With more than MaxNames names, the names the
// kernel already holds stay, so that a large table does not churn.
//
// It runs on every snapshot of the agent: a name that did not change
// costs a digest of its records and a map lookup, and nothing is copied.
func (a *Answerer) Sync(t *dnsproxy.Table) (SyncResult, error) {
	res := SyncResult{Left: map[string]int{}}
	a.syncs++
	kept, fresh := 0, 0
	for e := range t.WireEntries() {
		if why := limit(e); why != "" {
			res.Left[why]++
			continue
		}
		h := a.written[e.Name]
		if h == nil {
			fresh++
			continue
		}
		if d := digestOf(e); d != h.digest {
			if err := a.put(e); err != nil {
				return res, err
			}
			h.digest = d
			res.Written++
		}
		h.sync = a.syncs
		kept++
	}
	for name, h := range a.written {
		if h.sync == a.syncs {
			continue
		}
		k := nameKey(name)
		if err := a.objs.Names.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return res, fmt.Errorf("kernel DNS answers: remove name %q: %w", name, err)
		}
		delete(a.written, name)
		res.Deleted++
	}
	// The names not held yet, in a second pass rather than collected in
	// the first: a first Sync of a large table would collect them all.
	for e := range t.WireEntries() {
		if fresh == 0 {
			break
		}
		if limit(e) != "" || a.written[e.Name] != nil {
			continue
		}
		fresh--
		if kept == MaxNames {
			res.Left[fmt.Sprintf("more than %d names", MaxNames)]++
			continue
		}
		if err := a.put(e); err != nil {
			return res, err
		}
		a.written[e.Name] = &heldName{digest: digestOf(e), sync: a.syncs}
		res.Written++
		kept++
	}
	res.Names = len(a.written)
	return res, nil
}

// limit says why the kernel cannot answer e, or "".
func limit(e dnsproxy.WireEntry) string {
	if len(e.Name) > MaxNameLen {
		return fmt.Sprintf("name longer than %d bytes", MaxNameLen)
	}
	if len(e.A) > MaxRecordBytes || len(e.AAAA) > MaxRecordBytes {
		return fmt.Sprintf("more than %d bytes of A or AAAA records", MaxRecordBytes)
	}
	return ""
}

func nameKey(name string) answerNameKey {
	var k answerNameKey
	k.Len = uint8(len(name))
	copy(k.Name[:], name)
	return k
}

// put writes e's entry.
func (a *Answerer) put(e dnsproxy.WireEntry) error {
	a.key = nameKey(e.Name)
	a.value = answerNameAnswers{V4Count: uint16(e.ACount), V4Len: uint16(len(e.A)), V6Count: uint16(e.AAAACount), V6Len: uint16(len(e.AAAA))}
	copy(a.value.V4[:], e.A)
	copy(a.value.V6[:], e.AAAA)
	if err := a.objs.Names.Put(&a.key, &a.value); err != nil {
		return fmt.Errorf("kernel DNS answers: write name %q: %w", e.Name, err)
	}
	return nil
}

// digestOf is a digest (FNV-1a) of what e's entry holds: the records,
// the counts and where one type ends.
func digestOf(e dnsproxy.WireEntry) uint64 {
	h := uint64(14695981039346656037)
	add := func(b byte) { h = (h ^ uint64(b)) * 1099511628211 }
	for _, b := range e.A {
		add(b)
	}
	add(byte(e.ACount))
	add(0xff)
	for _, b := range e.AAAA {
		add(b)
	}
	add(byte(e.AAAACount))
	return h
}

// Stats counts what the program saw, since it was loaded.
type Stats struct {
	// Answered in the kernel from the table.
	Answered uint64
	// Missed: plain queries for names the kernel does not hold (or
	// holds expired, or spelled otherwise).
	Missed uint64
	// TooBig: answers longer than the client accepts, which the
	// interceptor truncates.
	TooBig uint64
	// Passed: other datagrams to the port (not a plain A or AAAA
	// query, or over a limit).
	Passed uint64
	// Tracked: queries conntrack had seen, which the interceptor
	// answers (a capture that NATs DNS to it; see docs/dns.md).
	Tracked uint64
	// Cached: answered in the kernel from the interceptor's cache.
	Cached uint64
}

// Stats sums the per-CPU counters.
func (a *Answerer) Stats() (Stats, error) {
	var st Stats
	for i, dst := range []*uint64{&st.Answered, &st.Missed, &st.TooBig, &st.Passed, &st.Tracked, &st.Cached} {
		var perCPU []uint64
		if err := a.objs.AnswerStats.Lookup(uint32(i), &perCPU); err != nil {
			return st, fmt.Errorf("kernel DNS answers: read counters: %w", err)
		}
		for _, n := range perCPU {
			*dst += n
		}
	}
	return st, nil
}

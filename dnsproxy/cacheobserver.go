package dnsproxy

import (
	"encoding/binary"
	"time"

	"github.com/miekg/dns"
)

// CacheObserver is told of the answers the cache holds in wire form as
// they come and go, so that another answerer can send them in the
// interceptor's place (dnsproxy/kernelanswers does, from the kernel). It
// is told only of answers the fast path would send from the cache: names
// the table, a wildcard or the search-list shortcut does not claim, with
// forwarding as the policy for unknown names.
//
// CacheStored and CacheDropped are called with a cache shard locked:
// they must be quick and must not call into the Server.
type CacheObserver interface {
	// CacheStored: e is now an answer of the cache (replacing any
	// answer of the same key and kind).
	CacheStored(e WireCacheEntry)
	// CacheDropped: nothing of k is cached any more.
	CacheDropped(k WireCacheKey)
	// TableChanged follows each SetTable: of the names told before,
	// those for which cacheable is false may no longer be answered from
	// the cache.
	TableChanged(cacheable func(name []byte) bool)
}

// WireCacheKey is what the cache keys an answer by.
type WireCacheKey struct {
	Name   string // lower-case wire form
	Qtype  uint16
	DO, CD bool
}

// WireCacheEntry is one cached answer as the fast path sends it
// (appendCached): the client's ID and RD bit put in, and the TTLs aged by
// the whole seconds since Stored.
type WireCacheEntry struct {
	WireCacheKey
	// EDNS: the answer for clients that sent an OPT record (it carries
	// one); otherwise for those that did not.
	EDNS bool
	// Answer is the packed answer: ID 0, RD clear, the TTLs as the
	// upstream gave them. It fits only queries that spell the name as
	// Answer[12:12+QnameLen] does.
	Answer   []byte
	QnameLen int
	// TTLOffsets are where the TTL of every record but OPT is in
	// Answer, and TTLs their values.
	TTLOffsets []uint16
	TTLs       []uint32
	// Need is the smallest UDP limit of a client the answer fits
	// (the fast path leaves larger ones to the slow path, which
	// truncates).
	Need int
	// Stored is when the upstream answered; from Expires on the cache
	// no longer answers from it.
	Stored, Expires time.Time
}

// splitCacheKey is the inverse of appendCacheKey.
func splitCacheKey(k cacheKey) (WireCacheKey, uint16, bool) {
	if len(k) < 6 {
		return WireCacheKey{}, 0, false
	}
	n := len(k) - 5
	b := []byte(k[n:])
	return WireCacheKey{Name: string(k[:n]), Qtype: binary.BigEndian.Uint16(b), DO: b[4]&1 != 0, CD: b[4]&2 != 0},
		binary.BigEndian.Uint16(b[2:]), true
}

// kernelCacheable reports whether the fast path would answer name from
// the cache, with table t.
func (s *Server) kernelCacheable(name []byte, t *Table) bool {
	return s.cache != nil && s.cfg.UnknownNames == UnknownForward && t.lookupWire(name) == nil && !s.shortcutMayApply(name, t)
}

// observeStored tells the observer of a stored entry's wire answers.
func (s *Server) observeStored(k cacheKey, e *cacheEntry) {
	o := s.cfg.CacheObserver
	if o == nil {
		return
	}
	key, class, ok := splitCacheKey(k)
	if !ok || class != dns.ClassINET {
		return
	}
	t := s.table.Load()
	if !s.kernelCacheable([]byte(key.Name), t) {
		return
	}
	for _, w := range []struct {
		a    *wireAnswer
		edns bool
	}{{e.wire.plain, false}, {e.wire.edns, true}} {
		if w.a == nil {
			continue
		}
		o.CacheStored(WireCacheEntry{
			WireCacheKey: key, EDNS: w.edns, Answer: w.a.b, QnameLen: len(w.a.qname),
			TTLOffsets: w.a.ttls, TTLs: w.a.orig, Need: max(len(w.a.b), w.a.packLen),
			Stored: e.stored, Expires: e.expires,
		})
	}
	// A table swapped in since the check above was told to the
	// observer without this entry: check again against it.
	if t2 := s.table.Load(); t2 != t && !s.kernelCacheable([]byte(key.Name), t2) {
		o.CacheDropped(key)
	}
}

// observeDropped tells the observer an entry is gone.
func (s *Server) observeDropped(k cacheKey) {
	if o := s.cfg.CacheObserver; o != nil {
		if key, class, ok := splitCacheKey(k); ok && class == dns.ClassINET {
			o.CacheDropped(key)
		}
	}
}

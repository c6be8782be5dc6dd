package kernelanswers

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/dnsproxy"
)

// Limits of the cached answers the kernel sends (bpf/dns_answer.h); a
// larger one is the interceptor's.
const (
	// MaxCachedBytes is the most bytes after the question.
	MaxCachedBytes = 384
	// MaxCachedRecords is the most records with a TTL.
	MaxCachedRecords = 16
)

const (
	cacheDO   = 1 << 0
	cacheCD   = 1 << 1
	cacheEDNS = 1 << 2
)

// cacheState is what the Answerer knows of the cache map; it is its own
// lock, since the interceptor's cache shards call in concurrently.
type cacheState struct {
	mu   sync.Mutex
	held map[answerCacheKey]struct{}
}

// CacheObserver is the Answerer as the interceptor's cache observer
// (dnsproxy.Config.CacheObserver): every answer the interceptor's fast
// path would send from its cache is sent from the kernel too, until it
// expires.
func (a *Answerer) CacheObserver() dnsproxy.CacheObserver { return (*cacheObserver)(a) }

type cacheObserver Answerer

func cacheKeyOf(k dnsproxy.WireCacheKey, edns bool) (answerCacheKey, bool) {
	var ck answerCacheKey
	if len(k.Name) > MaxNameLen {
		return ck, false
	}
	ck.Name.Len = uint8(len(k.Name))
	copy(ck.Name.Name[:], k.Name)
	ck.Qtype = k.Qtype
	if k.DO {
		ck.Flags |= cacheDO
	}
	if k.CD {
		ck.Flags |= cacheCD
	}
	if edns {
		ck.Flags |= cacheEDNS
	}
	return ck, true
}

// monotonic is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monotonic() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, err
	}
	return time.Duration(ts.Nano()), nil
}

func (o *cacheObserver) CacheStored(e dnsproxy.WireCacheEntry) {
	a := (*Answerer)(o)
	k, ok := cacheKeyOf(e.WireCacheKey, e.EDNS)
	if !ok {
		return
	}
	qend := 12 + e.QnameLen + 4
	v, ok := cachedValue(e, qend)
	c := &a.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	if !ok {
		// Too big for the kernel: whatever it held for the key is
		// stale now.
		o.drop(k)
		return
	}
	now, err := monotonic()
	if err != nil {
		o.drop(k)
		return
	}
	stored := now - time.Since(e.Stored)
	v.Stored = uint64(stored)
	v.Expires = uint64(stored + e.Expires.Sub(e.Stored))
	if err := a.objs.Cache.Put(&k, v); err != nil {
		// Left to the interceptor: whatever the map held for the
		// key is stale now.
		o.drop(k)
		return
	}
	c.held[k] = struct{}{}
}

// cachedValue is the map entry of e, whose question ends at qend; false
// when the kernel cannot send it.
func cachedValue(e dnsproxy.WireCacheEntry, qend int) (*answerCachedAnswer, bool) {
	if e.QnameLen > MaxNameLen || len(e.Answer) < qend || len(e.Answer)-qend > MaxCachedBytes ||
		len(e.TTLOffsets) > MaxCachedRecords || len(e.TTLOffsets) != len(e.TTLs) || e.Need > 0xffff {
		return nil, false
	}
	v := &answerCachedAnswer{Need: uint16(e.Need), TailLen: uint16(len(e.Answer) - qend), QnameLen: uint8(e.QnameLen), TtlCount: uint8(len(e.TTLs))}
	copy(v.Hdr[:], e.Answer[:12])
	copy(v.Qname[:], e.Answer[12:12+e.QnameLen])
	copy(v.Tail[:], e.Answer[qend:])
	for i, off := range e.TTLOffsets {
		if int(off) < qend || int(off)+4 > len(e.Answer) {
			return nil, false
		}
		v.TtlOff[i] = off - uint16(qend)
		v.Ttl[i] = e.TTLs[i]
	}
	return v, true
}

// drop removes k from the map; the caller holds the lock.
func (o *cacheObserver) drop(k answerCacheKey) {
	a := (*Answerer)(o)
	// Deleting fails only for a key the map does not hold (an answer
	// too big for it, or one the program never got).
	_ = a.objs.Cache.Delete(&k)
	delete(a.cache.held, k)
}

func (o *cacheObserver) CacheDropped(k dnsproxy.WireCacheKey) {
	a := (*Answerer)(o)
	a.cache.mu.Lock()
	defer a.cache.mu.Unlock()
	for _, edns := range []bool{false, true} {
		if ck, ok := cacheKeyOf(k, edns); ok {
			o.drop(ck)
		}
	}
}

func (o *cacheObserver) TableChanged(cacheable func(name []byte) bool) {
	a := (*Answerer)(o)
	a.cache.mu.Lock()
	defer a.cache.mu.Unlock()
	for k := range a.cache.held {
		if !cacheable(k.Name.Name[:k.Name.Len]) {
			o.drop(k)
		}
	}
}

// CachedAnswers is how many cached answers the kernel holds.
func (a *Answerer) CachedAnswers() int {
	a.cache.mu.Lock()
	defer a.cache.mu.Unlock()
	return len(a.cache.held)
}

package dnsproxy

import (
	"hash/maphash"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// CacheOptions bound what the cache keeps and for how long.
type CacheOptions struct {
	Size      int           // maximum entries; 0 disables the cache
	MinTTL    time.Duration // answers are kept at least this long (default 0)
	MaxTTL    time.Duration // and at most this long (default 1h)
	NegMaxTTL time.Duration // NXDOMAIN/NODATA at most this long (default 5m, RFC 2308 suggests ≤3h)
	// ServeStale keeps expired answers for up to StaleFor (default 1 day,
	// RFC 8767) and serves them, with a 30 s TTL, when every upstream fails.
	ServeStale bool
	StaleFor   time.Duration
	// StaleAnswerTimeout is how long a client whose answer is stale in the
	// cache waits for the upstreams before it gets the stale answer (RFC
	// 8767's client response timer, default 1.8 s); the upstream query goes
	// on and refreshes the cache. While every upstream is known to be
	// failing the stale answer is sent at once.
	StaleAnswerTimeout time.Duration
}

// cacheKey is the lower-case wire-format name followed by type, class and
// the DO and CD bits: a string of bytes, so that the wire path can look it
// up from a stack buffer without allocating.
type cacheKey string

// appendCacheKey appends the key of a question to dst; name is the
// lower-case wire-format name.
func appendCacheKey(dst, name []byte, qtype, qclass uint16, do, cd bool) []byte {
	var flags byte
	if do {
		flags |= 1
	}
	if cd {
		flags |= 2
	}
	dst = append(dst, name...)
	return append(dst, byte(qtype>>8), byte(qtype), byte(qclass>>8), byte(qclass), flags)
}

// keyFor is the cache key of a question in presentation form.
func keyFor(name string, qtype, qclass uint16, do, cd bool) (cacheKey, bool) {
	var buf [256]byte
	n, err := dns.PackDomainName(strings.ToLower(name), buf[:], 0, nil, false)
	if err != nil {
		return "", false
	}
	return cacheKey(appendCacheKey(make([]byte, 0, n+5), buf[:n], qtype, qclass, do, cd)), true
}

type cacheEntry struct {
	key        cacheKey
	msg        *dns.Msg // as the upstream answered; never modified
	wire       wireAnswers
	stored     time.Time
	expires    time.Time
	prev, next *cacheEntry
}

// cache is a sharded LRU: each shard has its own lock and list, so that
// concurrent lookups of different names rarely contend.
type cache struct {
	opts   CacheOptions
	seed   maphash.Seed
	shards []cacheShard
	// stored and dropped, when set, are told of each entry put and
	// each entry removed, with its shard locked.
	stored  func(cacheKey, *cacheEntry)
	dropped func(cacheKey)
}

type cacheShard struct {
	mu   sync.Mutex
	m    map[cacheKey]*cacheEntry
	head cacheEntry // sentinel: head.next is the most recently used
	max  int
}

const cacheShards = 16

func newCache(o CacheOptions) *cache {
	if o.Size <= 0 {
		return nil
	}
	if o.MaxTTL == 0 {
		o.MaxTTL = time.Hour
	}
	if o.NegMaxTTL == 0 {
		o.NegMaxTTL = 5 * time.Minute
	}
	if o.StaleFor == 0 {
		o.StaleFor = 24 * time.Hour
	}
	if o.StaleAnswerTimeout <= 0 {
		o.StaleAnswerTimeout = 1800 * time.Millisecond
	}
	c := &cache{opts: o, seed: maphash.MakeSeed(), shards: make([]cacheShard, cacheShards)}
	per := max(1, (o.Size+cacheShards-1)/cacheShards)
	for i := range c.shards {
		s := &c.shards[i]
		s.m = make(map[cacheKey]*cacheEntry)
		s.head.next, s.head.prev = &s.head, &s.head
		s.max = per
	}
	return c
}

func (c *cache) shard(k cacheKey) *cacheShard {
	return &c.shards[maphash.String(c.seed, string(k))%cacheShards]
}

// getWire returns the packed form of a fresh cached answer for a client
// with or without EDNS0, and when it was stored; nil when there is none or
// the entry has expired (expiry and serve-stale are the slow path's).
func (c *cache) getWire(k []byte, now time.Time, edns bool) (*wireAnswer, time.Time) {
	if c == nil {
		return nil, time.Time{}
	}
	s := &c.shards[maphash.Bytes(c.seed, k)%cacheShards]
	s.mu.Lock()
	e, ok := s.m[cacheKey(k)]
	if !ok || !now.Before(e.expires) {
		s.mu.Unlock()
		return nil, time.Time{}
	}
	w := e.wire.plain
	if edns {
		w = e.wire.edns
	}
	if w != nil {
		s.moveFront(e)
	}
	stored := e.stored
	s.mu.Unlock()
	return w, stored
}

// staleTTL is the TTL of a served stale answer (RFC 8767 section 4).
const staleTTL = 30

// get returns a copy of the cached answer with TTLs aged, and whether it is
// stale. Stale entries are returned only when allowStale is set.
func (c *cache) get(k cacheKey, now time.Time, allowStale bool) (*dns.Msg, bool) {
	if c == nil {
		return nil, false
	}
	s := c.shard(k)
	s.mu.Lock()
	e, ok := s.m[k]
	if !ok {
		s.mu.Unlock()
		return nil, false
	}
	stale := !now.Before(e.expires)
	if stale && (!allowStale || !c.opts.ServeStale || now.Sub(e.expires) > c.opts.StaleFor) {
		if !c.opts.ServeStale || now.Sub(e.expires) > c.opts.StaleFor {
			s.unlink(e)
			delete(s.m, k)
			if c.dropped != nil {
				c.dropped(k)
			}
		}
		s.mu.Unlock()
		return nil, false
	}
	s.moveFront(e)
	msg, stored := e.msg, e.stored
	s.mu.Unlock()

	out := msg.Copy()
	if stale {
		setTTLs(out, func(uint32) uint32 { return staleTTL })
	} else {
		age := uint32(now.Sub(stored) / time.Second)
		setTTLs(out, func(t uint32) uint32 {
			if t > age {
				return t - age
			}
			return 0
		})
	}
	return out, stale
}

func setTTLs(m *dns.Msg, f func(uint32) uint32) {
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			rr.Header().Ttl = f(rr.Header().Ttl)
		}
	}
}

// put stores an upstream answer if it may be cached, for as long as its
// records allow, with its packed forms for the wire path (may be empty).
func (c *cache) put(k cacheKey, m *dns.Msg, w wireAnswers, now time.Time) {
	if c == nil || m.Truncated {
		return
	}
	ttl, ok := c.ttlFor(m)
	if !ok {
		return
	}
	e := &cacheEntry{key: k, msg: m, wire: w, stored: now, expires: now.Add(ttl)}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.m[k]; ok {
		s.unlink(old)
		if c.dropped != nil {
			c.dropped(k)
		}
	}
	s.m[k] = e
	s.pushFront(e)
	if c.stored != nil {
		c.stored(k, e)
	}
	for len(s.m) > s.max {
		last := s.head.prev
		s.unlink(last)
		delete(s.m, last.key)
		if c.dropped != nil {
			c.dropped(last.key)
		}
	}
}

// ttlFor decides how long an answer may be kept: the smallest TTL of its
// records for a positive answer, the SOA's negative TTL (RFC 2308 section 5:
// min of the SOA TTL and its MINIMUM field) for NXDOMAIN and NODATA.
func (c *cache) ttlFor(m *dns.Msg) (time.Duration, bool) {
	switch {
	case m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0:
		least := ^uint32(0)
		for _, sec := range [][]dns.RR{m.Answer, m.Ns} {
			for _, rr := range sec {
				least = min(least, rr.Header().Ttl)
			}
		}
		d := time.Duration(least) * time.Second
		return max(min(d, c.opts.MaxTTL), c.opts.MinTTL), d > 0 || c.opts.MinTTL > 0
	case m.Rcode == dns.RcodeNameError || m.Rcode == dns.RcodeSuccess:
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				d := time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
				return max(min(d, c.opts.NegMaxTTL), c.opts.MinTTL), d > 0 || c.opts.MinTTL > 0
			}
		}
	}
	// SERVFAIL and negative answers without an SOA are not cached.
	return 0, false
}

func (c *cache) len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

func (s *cacheShard) unlink(e *cacheEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (s *cacheShard) pushFront(e *cacheEntry) {
	e.prev, e.next = &s.head, s.head.next
	s.head.next.prev = e
	s.head.next = e
}

func (s *cacheShard) moveFront(e *cacheEntry) {
	s.unlink(e)
	s.pushFront(e)
}

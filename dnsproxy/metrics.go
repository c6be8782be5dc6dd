package dnsproxy

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Outcome is how a query was answered.
type Outcome int

const (
	OutcomeTable     Outcome = iota // answered from the table (A/AAAA, NODATA)
	OutcomeSearch                   // answered by the search-domain shortcut
	OutcomeCache                    // forwarded name answered from the cache
	OutcomeStale                    // expired cache entry served because every upstream failed
	OutcomeForwarded                // answered by an upstream
	OutcomeNXDomain                 // unknown name refused with NXDOMAIN by policy or local zone
	OutcomeRefused                  // unknown name refused with REFUSED by policy
	OutcomeServFail                 // every upstream failed
	OutcomeFormErr                  // malformed or unsupported query
	OutcomeDropped                  // not answered (garbage, overload, too large)
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"table", "search", "cache", "stale", "forwarded", "nxdomain", "refused", "servfail", "formerr", "dropped"}

func (o Outcome) String() string {
	if o < 0 || o >= numOutcomes {
		return "unknown"
	}
	return outcomeNames[o]
}

// qtypes counted individually; everything else is "other".
var countedTypes = [...]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeCNAME, dns.TypeMX, dns.TypeTXT,
	dns.TypeSRV, dns.TypePTR, dns.TypeNS, dns.TypeSOA, dns.TypeHTTPS, dns.TypeSVCB, dns.TypeANY}

const numTypes = len(countedTypes) + 1

func typeIndex(t uint16) int {
	for i, c := range countedTypes {
		if c == t {
			return i
		}
	}
	return len(countedTypes)
}

func typeName(i int) string {
	if i < len(countedTypes) {
		return dns.TypeToString[countedTypes[i]]
	}
	return "other"
}

var latencyBuckets = [...]time.Duration{
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
}

// Metrics counts what a Server does. All methods are safe for concurrent
// use; read it with Snapshot.
type Metrics struct {
	queries   [numTypes][numOutcomes]atomic.Uint64
	truncated atomic.Uint64
	cacheHits atomic.Uint64
	cacheMiss atomic.Uint64
	tcpConns  atomic.Int64
	panics    atomic.Uint64

	mu        sync.Mutex
	upstreams map[netip.AddrPort]*upstreamMetrics
}

type upstreamMetrics struct {
	queries  atomic.Uint64
	failures atomic.Uint64
	buckets  [len(latencyBuckets) + 1]atomic.Uint64
	sumNanos atomic.Uint64
}

func newMetrics() *Metrics {
	return &Metrics{upstreams: make(map[netip.AddrPort]*upstreamMetrics)}
}

func (m *Metrics) query(qtype uint16, o Outcome) {
	m.queries[typeIndex(qtype)][o].Add(1)
}

func (m *Metrics) upstream(ap netip.AddrPort) *upstreamMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.upstreams[ap]
	if !ok {
		u = &upstreamMetrics{}
		m.upstreams[ap] = u
	}
	return u
}

func (u *upstreamMetrics) observe(d time.Duration, failed bool) {
	u.queries.Add(1)
	if failed {
		u.failures.Add(1)
		return
	}
	i := sort.Search(len(latencyBuckets), func(i int) bool { return d <= latencyBuckets[i] })
	u.buckets[i].Add(1)
	u.sumNanos.Add(uint64(d))
}

// MetricsSnapshot is a consistent-enough copy of the counters: each counter
// is read atomically, the set as a whole is not.
type MetricsSnapshot struct {
	// Queries counts queries by type name ("A", "AAAA", ..., "other") and
	// outcome name ("table", "cache", ...). Zero counts are left out.
	Queries   map[string]map[string]uint64
	Truncated uint64 // UDP answers sent with the TC bit
	TableHits uint64 // table + search outcomes
	CacheHits uint64 // cache + stale outcomes
	CacheMiss uint64
	TCPConns  int64 // open TCP connections
	Panics    uint64
	Upstreams []UpstreamSnapshot
}

// UpstreamSnapshot describes one upstream resolver.
type UpstreamSnapshot struct {
	Addr     netip.AddrPort
	Queries  uint64 // attempts sent
	Failures uint64 // timeouts, network errors, SERVFAIL/REFUSED answers
	// Latency of successful attempts: Buckets[i] counts those at most
	// latencyBuckets[i]; the last bucket is everything slower.
	Buckets [len(latencyBuckets) + 1]uint64
	Sum     time.Duration
}

// LatencyBounds returns the upper bounds of the upstream latency histogram
// buckets in UpstreamSnapshot.Buckets.
func LatencyBounds() []time.Duration { return append([]time.Duration(nil), latencyBuckets[:]...) }

// Snapshot copies the counters.
func (m *Metrics) Snapshot() MetricsSnapshot {
	s := MetricsSnapshot{
		Queries:   map[string]map[string]uint64{},
		Truncated: m.truncated.Load(),
		CacheMiss: m.cacheMiss.Load(),
		TCPConns:  m.tcpConns.Load(),
		Panics:    m.panics.Load(),
	}
	for t := range m.queries {
		for o := range m.queries[t] {
			v := m.queries[t][o].Load()
			if v == 0 {
				continue
			}
			if s.Queries[typeName(t)] == nil {
				s.Queries[typeName(t)] = map[string]uint64{}
			}
			s.Queries[typeName(t)][Outcome(o).String()] = v
			switch Outcome(o) {
			case OutcomeTable, OutcomeSearch:
				s.TableHits += v
			case OutcomeCache, OutcomeStale:
				s.CacheHits += v
			}
		}
	}
	m.mu.Lock()
	for ap, u := range m.upstreams {
		us := UpstreamSnapshot{Addr: ap, Queries: u.queries.Load(), Failures: u.failures.Load(), Sum: time.Duration(u.sumNanos.Load())}
		for i := range u.buckets {
			us.Buckets[i] = u.buckets[i].Load()
		}
		s.Upstreams = append(s.Upstreams, us)
	}
	m.mu.Unlock()
	sort.Slice(s.Upstreams, func(i, j int) bool { return s.Upstreams[i].Addr.String() < s.Upstreams[j].Addr.String() })
	return s
}

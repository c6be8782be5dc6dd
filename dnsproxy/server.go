package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/wire"
)

// UnknownPolicy says what to do with a name that is not in the table.
type UnknownPolicy int

const (
	UnknownForward  UnknownPolicy = iota // ask the upstreams (default)
	UnknownNXDomain                      // answer NXDOMAIN
	UnknownRefused                       // answer REFUSED
)

// ParseUnknownPolicy parses "forward", "nxdomain" or "refused".
func ParseUnknownPolicy(s string) (UnknownPolicy, error) {
	switch strings.ToLower(s) {
	case "forward":
		return UnknownForward, nil
	case "nxdomain":
		return UnknownNXDomain, nil
	case "refused":
		return UnknownRefused, nil
	}
	return 0, fmt.Errorf("unknown-names policy %q: want forward, nxdomain or refused", s)
}

func (p UnknownPolicy) String() string {
	return [...]string{"forward", "nxdomain", "refused"}[p]
}

// Config configures a Server. The zero value of every field but Table has a
// sensible default.
type Config struct {
	// Listen addresses, UDP and TCP each. Default 127.0.0.1:15053 and
	// [::1]:15053. Non-loopback addresses need AllowNonLoopback.
	Listen           []netip.AddrPort
	AllowNonLoopback bool
	// UDPSockets per listen address, sharing it with SO_REUSEPORT.
	// Default: the number of CPUs.
	UDPSockets int

	Table *Table // nil: an empty table

	Upstreams []netip.AddrPort // usually ResolvConf.Nameservers
	// Search domains of the workload (ResolvConf.Search), enabling the
	// search-domain shortcut.
	Search []string
	// LocalZones are answered only from the table: an unknown name under
	// them is NXDOMAIN, never forwarded. Default ["mesh."].
	LocalZones   []string
	UnknownNames UnknownPolicy

	Cache CacheOptions // Size 0 disables the cache
	// CacheObserver, when set, is told of the answers the cache holds
	// in wire form (see CacheObserver).
	CacheObserver CacheObserver

	HedgeDelay   time.Duration // default 150ms
	QueryTimeout time.Duration // per forwarded query, all upstreams; default 3s
	// UpstreamMark is set as SO_MARK on every upstream socket so that the
	// capture rules let it through; 0 sets none (then shunt must run as the
	// exempted UID). The CLI defaults to DefaultUpstreamMark.
	UpstreamMark uint32

	MaxTCPConns int // default 256
	// MaxTCPConnsPerPeer bounds the TCP connections of one client address;
	// default a quarter of MaxTCPConns. Over either bound the connection
	// idle longest (of that client, or of the client with the most) is
	// closed to make room; one with a query being answered never is.
	MaxTCPConnsPerPeer int
	TCPIdleTimeout     time.Duration // default 10s
	MaxMessageSize     int           // largest query accepted; default 4096
	// MaxInFlight bounds the queries on the slow path (forwarded, mostly)
	// at once; default 1024. One UDP client (address and port) holds at
	// most MaxInFlightPerClient of them (default an eighth, at least 4),
	// one TCP connection likewise: beyond its share a UDP client's query
	// is dropped, a TCP connection is not read, so a flood from one
	// client leaves the others their slots.
	MaxInFlight          int
	MaxInFlightPerClient int
	DrainTimeout         time.Duration // how long Run waits for in-flight queries; default 3s

	Logger *slog.Logger // default slog.Default()
}

// DefaultListen is where the interceptor listens when Config.Listen is
// empty: 127.0.0.1 and ::1 at port 15053.
func DefaultListen() []netip.AddrPort {
	return []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), wire.DNSPort), netip.AddrPortFrom(netip.IPv6Loopback(), wire.DNSPort)}
}

func (c *Config) setDefaults() {
	if len(c.Listen) == 0 {
		c.Listen = DefaultListen()
	}
	if c.UDPSockets <= 0 {
		c.UDPSockets = runtime.NumCPU()
	}
	if c.LocalZones == nil {
		c.LocalZones = []string{"mesh."}
	}
	if c.HedgeDelay <= 0 {
		c.HedgeDelay = 150 * time.Millisecond
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = 3 * time.Second
	}
	if c.MaxTCPConns <= 0 {
		c.MaxTCPConns = 256
	}
	if c.MaxTCPConnsPerPeer <= 0 {
		c.MaxTCPConnsPerPeer = max(1, c.MaxTCPConns/4)
	}
	if c.TCPIdleTimeout <= 0 {
		c.TCPIdleTimeout = 10 * time.Second
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = 4096
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.MaxInFlightPerClient <= 0 {
		c.MaxInFlightPerClient = max(4, c.MaxInFlight/8)
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 3 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Server is the DNS interceptor. Create it with New, run it with Run (or
// Serve, with sockets made elsewhere), and feed it tables and upstreams while
// it runs.
type Server struct {
	cfg    Config
	log    *slog.Logger
	table  atomic.Pointer[Table]
	search []string // presentation form, lower case, fully qualified
	// searchWire are the search domains in lower-case wire form, for the
	// wire path.
	searchWire [][]byte
	zones      []string
	fwd        *forwarder
	cache      *cache
	metrics    *Metrics

	inflight chan struct{}
	clients  *clientShares
	// refreshes are the upstream queries under way for expired cache
	// entries, by key; background tracks them (and other work that
	// outlives the query that started it) so that Serve waits for them.
	refreshMu  sync.Mutex
	refreshes  map[cacheKey]*refreshing
	background sync.WaitGroup
	running    atomic.Bool
	// readers are the UDP sockets' readers, by id, for helpRead.
	readers   sync.Map
	readerIDs atomic.Int64
	ready     chan struct{}
	addrsMu   sync.Mutex
	addrs     []net.Addr
}

// New checks cfg and builds a Server. It fails when a listen address is not
// loopback without AllowNonLoopback, when an upstream is one of shunt's own
// listen addresses (a loop), and when UpstreamMark is set but this process
// may not set socket marks.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	for _, ap := range cfg.Listen {
		if !ap.IsValid() {
			return nil, fmt.Errorf("listen address %q is not valid", ap.String())
		}
		if !ap.Addr().IsLoopback() && !cfg.AllowNonLoopback {
			return nil, fmt.Errorf("listen address %s is not a loopback address: shunt would answer DNS for the whole network; allow it explicitly (AllowNonLoopback, --allow-non-loopback)", ap)
		}
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		metrics:  newMetrics(),
		cache:    newCache(cfg.Cache),
		inflight: make(chan struct{}, cfg.MaxInFlight),
		clients:  newClientShares(cfg.MaxInFlightPerClient),
		ready:    make(chan struct{}),

		refreshes: make(map[cacheKey]*refreshing),
	}
	for _, z := range cfg.LocalZones {
		s.zones = append(s.zones, strings.ToLower(dns.Fqdn(z)))
	}
	for _, d := range cfg.Search {
		if _, ok := dns.IsDomainName(d); !ok {
			return nil, fmt.Errorf("search domain %q is not a domain name", d)
		}
		fq := strings.ToLower(dns.Fqdn(d))
		s.search = append(s.search, fq)
		var buf [256]byte
		n, err := dns.PackDomainName(fq, buf[:], 0, nil, false)
		if err != nil {
			return nil, fmt.Errorf("search domain %q: %w", d, err)
		}
		s.searchWire = append(s.searchWire, append([]byte(nil), buf[:n]...))
	}
	if cfg.UpstreamMark != 0 {
		if err := checkMark(cfg.UpstreamMark); err != nil {
			return nil, err
		}
	}
	s.fwd = &forwarder{hedge: cfg.HedgeDelay, timeout: cfg.QueryTimeout, bufSize: ednsBufSize}
	if cfg.UpstreamMark != 0 {
		s.fwd.dialer.Control = markControl(cfg.UpstreamMark)
	}
	if err := s.SetUpstreams(cfg.Upstreams...); err != nil {
		return nil, err
	}
	if s.cache != nil && cfg.CacheObserver != nil {
		s.cache.stored, s.cache.dropped = s.observeStored, s.observeDropped
	}
	if cfg.Table != nil {
		s.table.Store(cfg.Table)
	} else {
		s.table.Store(&Table{exact: map[string]*entry{}, wild: map[string]*entry{}, ttl: uint32(DefaultTTL / time.Second)})
	}
	return s, nil
}

// SetTable replaces the name table; queries already being answered finish
// with the old one, every later query sees the new one whole.
func (s *Server) SetTable(t *Table) {
	if t == nil {
		t = &Table{exact: map[string]*entry{}, wild: map[string]*entry{}, ttl: uint32(DefaultTTL / time.Second)}
	}
	s.table.Store(t)
	if o := s.cfg.CacheObserver; o != nil && s.cache != nil {
		o.TableChanged(func(name []byte) bool { return s.kernelCacheable(name, t) })
	}
}

// Table returns the table in force.
func (s *Server) Table() *Table { return s.table.Load() }

// SetUpstreams replaces the upstream resolvers (port 53 if zero). Health
// history is kept for upstreams that stay.
func (s *Server) SetUpstreams(addrs ...netip.AddrPort) error {
	old := map[netip.AddrPort]*upstream{}
	if p := s.fwd.ups.Load(); p != nil {
		for _, u := range *p {
			old[u.addr] = u
		}
	}
	ups := make([]*upstream, 0, len(addrs))
	seen := map[netip.AddrPort]bool{}
	for _, ap := range addrs {
		if !ap.Addr().IsValid() {
			return fmt.Errorf("upstream %q is not an IP address", ap.String())
		}
		if ap.Port() == 0 {
			ap = netip.AddrPortFrom(ap.Addr(), 53)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		for _, l := range s.cfg.Listen {
			if l == ap {
				return fmt.Errorf("upstream %s is shunt's own listen address: queries would loop", ap)
			}
		}
		if seen[ap] {
			continue
		}
		seen[ap] = true
		u := old[ap]
		if u == nil {
			u = &upstream{addr: ap, dial: ap.String(), m: s.metrics.upstream(ap), pool: newUDPPool(ap.String(), &s.fwd.dialer)}
		}
		delete(old, ap)
		ups = append(ups, u)
	}
	s.fwd.ups.Store(&ups)
	// Queries still waiting on a removed upstream fail now; it is not
	// asked again.
	for _, u := range old {
		u.pool.close()
	}
	return nil
}

// Upstreams returns the upstreams in their configured order.
func (s *Server) Upstreams() []netip.AddrPort {
	var out []netip.AddrPort
	for _, u := range *s.fwd.ups.Load() {
		out = append(out, u.addr)
	}
	return out
}

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Ready is closed once the server is listening.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the bound addresses (UDP and TCP) once Ready is closed;
// useful with port 0.
func (s *Server) Addrs() []net.Addr {
	s.addrsMu.Lock()
	defer s.addrsMu.Unlock()
	return append([]net.Addr(nil), s.addrs...)
}

// Run listens on every Config.Listen address, UDP and TCP, and serves until
// ctx is cancelled; then it stops accepting, lets in-flight queries finish
// (up to DrainTimeout) and returns nil.
func (s *Server) Run(ctx context.Context) error {
	var pcs []net.PacketConn
	var lns []net.Listener
	closeAll := func() {
		for _, pc := range pcs {
			pc.Close()
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, ap := range s.cfg.Listen {
		for try := 1; ; try++ {
			upcs, ln, err := s.listen(ctx, ap)
			if err == nil {
				pcs = append(pcs, upcs...)
				lns = append(lns, ln)
				break
			}
			// With port 0 the UDP socket picks the port and TCP takes the
			// same number, which another process may hold for TCP: pick
			// again rather than fail.
			if ap.Port() != 0 || !errors.Is(err, syscall.EADDRINUSE) || try == 10 {
				closeAll()
				return err
			}
		}
	}
	return s.Serve(ctx, pcs, lns)
}

// listen opens the UDP sockets and the TCP listener of one address.
func (s *Server) listen(ctx context.Context, ap netip.AddrPort) ([]net.PacketConn, net.Listener, error) {
	var pcs []net.PacketConn
	fail := func(err error) ([]net.PacketConn, net.Listener, error) {
		for _, pc := range pcs {
			pc.Close()
		}
		return nil, nil, err
	}
	lc := net.ListenConfig{Control: udpListenControl}
	// With port 0 the first socket picks the port the others share.
	addr := ap
	for i := 0; i < s.cfg.UDPSockets; i++ {
		pc, err := lc.ListenPacket(ctx, "udp", addr.String())
		if err != nil {
			return fail(fmt.Errorf("listen udp %s: %w", addr, err))
		}
		pcs = append(pcs, pc)
		addr = netip.AddrPortFrom(ap.Addr(), pc.LocalAddr().(*net.UDPAddr).AddrPort().Port())
	}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return fail(fmt.Errorf("listen tcp %s: %w", addr, err))
	}
	return pcs, ln, nil
}

// Serve answers on sockets the caller opened (for example inside another
// network namespace) and closes them when ctx is cancelled and in-flight
// queries are done.
func (s *Server) Serve(ctx context.Context, pcs []net.PacketConn, lns []net.Listener) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("dns server is already running")
	}
	// Handlers run under work, which outlives ctx by the drain timeout so
	// that queries in flight at shutdown still get their answers.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg, handlers sync.WaitGroup
	s.addrsMu.Lock()
	for _, pc := range pcs {
		s.addrs = append(s.addrs, pc.LocalAddr())
	}
	for _, ln := range lns {
		s.addrs = append(s.addrs, ln.Addr())
	}
	s.addrsMu.Unlock()
	for _, pc := range pcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveUDP(ctx, work, pc, &handlers)
		}()
	}
	conns := newConnSet(s.cfg.MaxTCPConns, s.cfg.MaxTCPConnsPerPeer)
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveTCP(ctx, work, ln, conns, &handlers)
		}()
	}
	s.log.Info("dns interceptor listening", "addrs", s.Addrs(), "upstreams", s.Upstreams(), "names", s.Table().Len())
	close(s.ready)

	<-ctx.Done()
	s.log.Info("dns interceptor draining")
	for _, ln := range lns {
		ln.Close()
	}
	for _, pc := range pcs {
		// Wake the readers; the socket stays open for answers in flight.
		_ = pc.SetReadDeadline(time.Now())
	}
	conns.closeIdle()
	done := make(chan struct{})
	go func() { wg.Wait(); handlers.Wait(); s.background.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.cfg.DrainTimeout):
		cancelWork()
		conns.closeAll()
		<-done
	}
	for _, pc := range pcs {
		pc.Close()
	}
	conns.closeAll()
	for _, u := range *s.fwd.ups.Load() {
		u.pool.close()
	}
	return nil
}

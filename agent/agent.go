package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/rulewatch"
	"github.com/shunt-dev/shunt/sockowner"
)

// Source delivers agent snapshots: xdsclient.Client in shunt, a fake in
// tests. Current may return a persisted snapshot before Run has connected.
type Source interface {
	Run(ctx context.Context) error
	Current() *mesh.AgentSnapshot
	Updates() <-chan *mesh.AgentSnapshot
}

// SourceStatus is what the agent reports of its connection to the control
// plane.
type SourceStatus struct {
	Connected       bool   `json:"connected"`
	Reconnects      int    `json:"reconnects"`
	LastError       string `json:"lastError,omitempty"`
	LastNACK        string `json:"lastNack,omitempty"`
	SnapshotVersion string `json:"snapshotVersion,omitempty"`
}

// Options configure an Agent.
type Options struct {
	Source Source
	// SourceStatus, when set, is read for /metrics and /readyz.
	SourceStatus func() SourceStatus

	// Engine installs Plan and its locked-down variants; nil leaves
	// capture alone (--no-capture).
	Engine redirect.Engine
	Plan   *redirect.Plan

	// DNS configures the interceptor; its Table is replaced by each
	// snapshot's names.
	DNS dnsproxy.Config
	// DNSTTL is the TTL of answers from the snapshot's names.
	DNSTTL time.Duration
	// OnTable, when set, is called with each table the interceptor
	// takes, right after it takes it and in the same order: the kernel
	// answerer (--dns-kernel-answers) follows the interceptor with it.
	OnTable func(*dnsproxy.Table)
	// KernelDNS, when set, reads the kernel answerer's counters, for
	// /metrics: the queries it answers never reach the interceptor's.
	KernelDNS func() (KernelDNSStats, error)

	// VIPRanges stay reachable under lockdown (connections to VIPs are
	// captured anyway; allowing the ranges keeps a VIP the proxy has not
	// learnt yet from being rejected rather than refused by the proxy).
	VIPRanges []netip.Prefix

	// Resolver resolves DNS-resolved clusters' hosts under lockdown.
	// Default: the DNS upstreams, with the DNS upstream mark.
	Resolver HostResolver
	// MinRefresh and MaxRefresh clamp the TTL of resolved hosts (default
	// 5s and 5m); a failed resolution is retried after MinRefresh.
	MinRefresh, MaxRefresh time.Duration

	// ReconcileInterval is how often the installed rules are compared with
	// what the agent applied (default 2s).
	ReconcileInterval time.Duration
	// CleanupOnExit removes the rules when Run returns.
	CleanupOnExit bool

	// Proxy, when set, is the proxy shunt runs itself (--envoy-binary):
	// /readyz waits for it and /metrics reports it.
	Proxy ProxyStatus

	Logger *slog.Logger
}

// KernelDNSStats counts what the kernel answerer (dnsproxy/kernelanswers)
// saw on lo, by outcome: Table and Cache were answered in the kernel, the
// others went on to the interceptor.
type KernelDNSStats struct {
	Table, Cache, Missed, TooBig, Passed, Tracked uint64
}

// ProxyStatus is what the agent reports of the proxy process it runs
// (envoy/supervisor).
type ProxyStatus interface {
	// Ready reports whether the proxy says it is live, and if not why.
	Ready() (bool, string)
	// Up reports whether the process is running.
	Up() bool
	// Restarts counts the processes started after the first.
	Restarts() uint64
}

// Agent applies snapshots to the capture and the DNS interceptor.
type Agent struct {
	opts    Options
	log     *slog.Logger
	dns     *dnsproxy.Server
	metrics *metrics

	reloads chan reload
	applied chan struct{} // signalled after each snapshot is applied, for tests and benchmarks

	snap      atomic.Pointer[mesh.AgentSnapshot]
	plan      atomic.Pointer[redirect.Plan] // installed
	captureOK atomic.Bool
	dnsUp     atomic.Bool
	dnsHeld   atomic.Pointer[string] // why the DNS port cannot be bound
	lastErr   atomic.Pointer[string]

	// Owned by the Run loop.
	base      *redirect.Plan
	cur       *mesh.AgentSnapshot
	installed *redirect.Plan
	hosts     map[string]*hostEntry
	resolving bool
	// legacy: the rules are in iptables-legacy, whose changes are not
	// announced, so they are polled every legacyPollInterval.
	legacy bool
}

// legacyPollInterval is how often legacy iptables rules are read for drift;
// minChangeGap spaces repairs triggered by change notifications.
const (
	legacyPollInterval = 200 * time.Millisecond
	minChangeGap       = 50 * time.Millisecond
)

type reload struct {
	plan      *redirect.Plan
	upstreams []netip.AddrPort
}

type hostEntry struct {
	addrs   []netip.Addr
	prev    []netip.Addr
	expires time.Time
}

// New checks the options and prepares the DNS interceptor; nothing is
// listened on or installed before Run.
func New(opts Options) (*Agent, error) {
	if opts.Source == nil {
		return nil, errors.New("agent: no snapshot source")
	}
	if opts.Engine != nil && opts.Plan == nil {
		return nil, errors.New("agent: a capture engine needs a plan")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ReconcileInterval <= 0 {
		opts.ReconcileInterval = 2 * time.Second
	}
	if opts.MinRefresh <= 0 {
		opts.MinRefresh = 5 * time.Second
	}
	if opts.MaxRefresh <= 0 {
		opts.MaxRefresh = 5 * time.Minute
	}
	if opts.Resolver == nil {
		opts.Resolver = &UpstreamResolver{Upstreams: opts.DNS.Upstreams, Mark: opts.DNS.UpstreamMark}
	}
	opts.DNS.Logger = opts.Logger
	opts.DNS.Table = nil
	srv, err := dnsproxy.New(opts.DNS)
	if err != nil {
		return nil, fmt.Errorf("agent: DNS interceptor: %w", err)
	}
	a := &Agent{
		opts:    opts,
		log:     opts.Logger,
		dns:     srv,
		reloads: make(chan reload, 1),
		applied: make(chan struct{}, 1),
		hosts:   map[string]*hostEntry{},
	}
	if opts.Plan != nil {
		a.base = opts.Plan.Clone()
	}
	a.metrics = newMetrics(a)
	return a, nil
}

// DNS returns the interceptor, for its addresses and metrics.
func (a *Agent) DNS() *dnsproxy.Server { return a.dns }

// Snapshot returns the snapshot in force (nil before the first one).
func (a *Agent) Snapshot() *mesh.AgentSnapshot { return a.snap.Load() }

// InstalledPlan returns the plan last installed (nil if none).
func (a *Agent) InstalledPlan() *redirect.Plan { return a.plan.Load() }

// Applied is signalled (without blocking, coalescing) each time a snapshot
// has been applied.
func (a *Agent) Applied() <-chan struct{} { return a.applied }

// Ready reports whether the agent does its job: the DNS interceptor
// listens, a snapshot is loaded and the rules it asks for are in place. The
// reason says what is missing.
func (a *Agent) Ready() (bool, string) {
	var missing []string
	if !a.dnsUp.Load() {
		msg := "DNS interceptor not listening"
		if e := a.dnsHeld.Load(); e != nil {
			msg += ": " + *e
		}
		missing = append(missing, msg)
	}
	if a.snap.Load() == nil {
		missing = append(missing, "no snapshot from the control plane yet")
	}
	if a.opts.Engine != nil && !a.captureOK.Load() {
		msg := "capture rules not in place"
		if e := a.lastErr.Load(); e != nil {
			msg += ": " + *e
		}
		missing = append(missing, msg)
	}
	if p := a.opts.Proxy; p != nil {
		if ok, why := p.Ready(); !ok {
			missing = append(missing, why)
		}
	}
	return len(missing) == 0, strings.Join(missing, "; ")
}

// Reload replaces the user's capture plan and the DNS upstreams (after the
// configuration file changed); Run applies it at once. A nil plan keeps
// the current one.
func (a *Agent) Reload(plan *redirect.Plan, upstreams []netip.AddrPort) {
	r := reload{upstreams: upstreams}
	if plan != nil {
		r.plan = plan.Clone()
	}
	for {
		select {
		case a.reloads <- r:
			return
		default:
		}
		select {
		case <-a.reloads: // an unapplied reload is superseded
		default:
		}
	}
}

// Run serves DNS, installs the capture, follows the source's snapshots and
// keeps the rules as applied until ctx ends. It then lets in-flight DNS
// queries finish and, with CleanupOnExit, removes the rules.
func (a *Agent) Run(ctx context.Context) error {
	dnsCtx, stopDNS := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDNS()
	dnsDone := make(chan error, 1)
	held := make(chan error, 1)
	go func() { dnsDone <- a.serveDNS(dnsCtx, held) }()
	select {
	case <-a.dns.Ready():
		a.dnsUp.Store(true)
	case err := <-dnsDone:
		return fmt.Errorf("agent: DNS interceptor: %w", err)
	case <-held:
		// Someone else holds the port: go on without DNS (the capture
		// keeps the pod's DNS failing closed) and take it once free.
		go func() {
			select {
			case <-a.dns.Ready():
				a.dnsHeld.Store(nil)
				a.dnsUp.Store(true)
				a.log.Info("DNS interceptor listening", "addrs", a.dns.Addrs())
			case <-dnsCtx.Done():
			}
		}()
	case <-ctx.Done():
	}

	// A persisted snapshot is applied before the control plane is asked:
	// the workload keeps its names and lockdown across restarts even while
	// the control plane is unreachable.
	if s := a.opts.Source.Current(); s != nil {
		a.log.Info("applying the persisted snapshot", "version", s.Version, "names", len(s.Names), "receivedAt", s.ReceivedAt)
		a.apply(ctx, s)
	} else {
		a.reconcile(ctx)
	}

	srcCtx, stopSrc := context.WithCancel(ctx)
	srcDone := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); srcDone <- a.opts.Source.Run(srcCtx) }()

	resolved := make(chan map[string]resolution, 1)
	reconcile := time.NewTicker(a.opts.ReconcileInterval)
	// nf_tables announces each ruleset change: drift is repaired as soon
	// as it happens instead of at the next tick. The legacy backend
	// announces nothing, so its rules are read more often (legacyPoll).
	var changes <-chan struct{}
	if a.opts.Engine != nil {
		ch, err := rulewatch.Watch(ctx)
		if err != nil {
			a.log.Warn("ruleset changes are not announced here; drift is found by polling", "err", err, "interval", a.opts.ReconcileInterval)
		}
		changes = ch
	}
	legacyPoll := time.NewTicker(legacyPollInterval)
	defer legacyPoll.Stop()
	var changed <-chan time.Time
	var lastChange time.Time
	refresh := time.NewTicker(time.Second)
	defer reconcile.Stop()
	defer refresh.Stop()

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case s := <-a.opts.Source.Updates():
			if s != nil {
				a.apply(ctx, s)
			}
		case r := <-a.reloads:
			a.applyReload(ctx, r)
		case res := <-resolved:
			a.resolving = false
			if a.store(res) {
				a.reconcile(ctx)
			}
		case <-refresh.C:
			a.refreshHosts(ctx, resolved)
		case _, ok := <-changes:
			if !ok {
				changes = nil
				break
			}
			// Repairs follow a change at once, but at most one per
			// minChangeGap, so a tool fighting shunt over the rules
			// cannot make it spin.
			if changed == nil {
				changed = time.After(time.Until(lastChange.Add(minChangeGap)))
			}
		case <-changed:
			changed, lastChange = nil, time.Now()
			a.reconcile(ctx)
		case <-legacyPoll.C:
			if a.legacy {
				a.reconcile(ctx)
			}
		case <-reconcile.C:
			a.reconcile(ctx)
		case err := <-dnsDone:
			runErr = fmt.Errorf("agent: DNS interceptor stopped: %w", err)
			dnsDone <- nil
			break loop
		case err := <-srcDone:
			if err != nil {
				runErr = fmt.Errorf("agent: snapshot source: %w", err)
			}
			srcDone <- nil
			break loop
		}
	}
	stopSrc()
	wg.Wait()
	a.log.Info("stopping: draining DNS")
	a.dnsUp.Store(false)
	stopDNS()
	if err := <-dnsDone; err != nil && runErr == nil {
		runErr = fmt.Errorf("agent: DNS interceptor: %w", err)
	}
	if a.opts.CleanupOnExit && a.opts.Engine != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		err := a.opts.Engine.Uninstall(cctx)
		switch {
		case err == nil:
			a.log.Info("capture rules removed")
		case errors.Is(err, redirect.ErrNotInstalled):
		default:
			runErr = errors.Join(runErr, fmt.Errorf("agent: remove capture rules: %w", err))
		}
	}
	return runErr
}

// serveDNS runs the interceptor. While another socket holds its port (a
// process of the pod bound it while the agent was down), it names the
// holder, retries, and tells held once; the capture rules drop replies from
// the port that do not come from the proxy's UID or root, so the pod's DNS
// fails closed meanwhile rather than being answered by the impostor.
func (a *Agent) serveDNS(ctx context.Context, held chan<- error) error {
	delay := 100 * time.Millisecond
	for {
		err := a.dns.Run(ctx)
		if err == nil || ctx.Err() != nil || !errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
		err = sockowner.Explain(err)
		msg := err.Error()
		a.dnsHeld.Store(&msg)
		select {
		case held <- err:
		default:
		}
		a.log.Error("DNS interceptor port is held by another socket; the pod's DNS fails closed until it is free", "err", err, "retryIn", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// apply makes a snapshot current: hosts it newly needs are resolved (for a
// short while; stragglers are retried in the background), the rules are
// installed, and then the DNS table is swapped, so that a name resolves
// once the way to it is open. The table is swapped even when the install
// failed (it is retried every reconcile interval, and readiness says so):
// a mesh name answers a VIP, whose traffic reaches the proxy or nothing,
// while a name held back would be forwarded upstream and answered with a
// real address the workload could reach around the mesh's policy.
func (a *Agent) apply(ctx context.Context, s *mesh.AgentSnapshot) {
	start := time.Now()
	prev := a.cur
	a.cur = s
	var missing []string
	for _, h := range hostsOf(s) {
		if _, ok := a.hosts[h]; !ok {
			missing = append(missing, h)
		}
	}
	if len(missing) > 0 {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		a.store(resolveAll(rctx, a.opts.Resolver, missing))
		cancel()
	}
	a.forget()
	a.reconcile(ctx)
	if prev == nil || prev.Version == "" || prev.Version != s.Version || !maps.EqualFunc(prev.Names, s.Names, slices.Equal) {
		t, err := dnsproxy.NewTable(s.Names, dnsproxy.TableOptions{TTL: a.opts.DNSTTL})
		if err != nil {
			// The source validated the snapshot; a name the table refuses
			// is a bug worth seeing, and the last good table stays.
			a.log.Error("snapshot names rejected by the DNS table; keeping the previous table", "version", s.Version, "err", err)
			a.metrics.snapshotErrors.Inc()
		} else {
			a.dns.SetTable(t)
			if a.opts.OnTable != nil {
				a.opts.OnTable(t)
			}
		}
	}
	a.snap.Store(s)
	a.metrics.snapshotsApplied.Inc()
	a.log.Info("snapshot applied", "version", s.Version, "names", len(s.Names), "passthrough", s.Passthrough,
		"allowedEndpoints", len(s.AllowedEndpoints), "dnsHosts", len(s.DNSHosts), "took", time.Since(start).Round(time.Microsecond))
	select {
	case a.applied <- struct{}{}:
	default:
	}
}

func (a *Agent) applyReload(ctx context.Context, r reload) {
	if r.plan != nil {
		if a.base == nil {
			a.log.Warn("configuration reloaded, but capture is not managed (--no-capture): plan ignored")
		} else {
			a.base = r.plan
		}
	}
	if len(r.upstreams) > 0 && !slices.Equal(r.upstreams, a.dns.Upstreams()) {
		if err := a.dns.SetUpstreams(r.upstreams...); err != nil {
			a.log.Error("configuration reloaded: upstream resolvers refused", "err", err)
		} else if ur, ok := a.opts.Resolver.(*UpstreamResolver); ok {
			// Read by resolutions in flight: replace, never mutate.
			a.opts.Resolver = &UpstreamResolver{Upstreams: slices.Clone(r.upstreams), Mark: ur.Mark, Timeout: ur.Timeout}
		}
	}
	a.log.Info("configuration reloaded")
	a.reconcile(ctx)
}

// reconcile installs the desired plan when it differs from what was
// installed, and re-installs it when the live rules drifted from it.
func (a *Agent) reconcile(ctx context.Context) {
	eng := a.opts.Engine
	if eng == nil {
		return
	}
	want := desiredPlan(a.base, a.cur, a.resolvedAddrs(), a.opts.VIPRanges)
	a.metrics.reconciles.Inc()
	if a.installed != nil && want.Equal(a.installed) {
		a.syncEngine(ctx)
		st, err := eng.Status(ctx)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("reading capture status failed", "err", err)
			}
			return
		}
		a.legacy = st.Backend == "legacy"
		if st.Installed && len(st.Drift) == 0 {
			return
		}
		drift := st.Drift
		if !st.Installed && len(drift) == 0 {
			drift = []string{"rules removed"}
		}
		a.metrics.drifts.Inc()
		a.log.Warn("capture rules drifted from what shunt installed; restoring them", "drift", strings.Join(drift, "; "))
	}
	a.install(ctx, want)
}

// listenerSyncer is an engine that must be told when the proxy's inbound
// listener appears (the eBPF engine steers inbound connections to the
// listener socket itself, which exists only once the proxy runs).
type listenerSyncer interface {
	SyncListener(ctx context.Context) (int, error)
}

// syncEngine lets an engine catch up with what changes without a new plan:
// the proxy (re)starting and opening its inbound listener.
func (a *Agent) syncEngine(ctx context.Context) {
	if s, ok := a.opts.Engine.(listenerSyncer); ok && a.installed != nil && a.installed.CaptureInbound {
		if _, err := s.SyncListener(ctx); err != nil && ctx.Err() == nil {
			a.log.Debug("inbound listener not registered yet", "err", err)
		}
	}
}

func (a *Agent) install(ctx context.Context, p *redirect.Plan) {
	start := time.Now()
	if err := a.opts.Engine.Install(ctx, p); err != nil {
		if ctx.Err() != nil {
			return
		}
		a.metrics.installFailures.Inc()
		msg := err.Error()
		a.lastErr.Store(&msg)
		a.captureOK.Store(false)
		a.log.Error("installing capture rules failed; retrying", "err", err, "retryIn", a.opts.ReconcileInterval)
		return
	}
	a.metrics.installs.Inc()
	a.lastErr.Store(nil)
	a.installed = p
	a.plan.Store(p)
	a.captureOK.Store(true)
	allowed, endpoints := -1, -1
	if p.Egress != nil {
		allowed, endpoints = len(p.Egress.Allowed), len(p.Egress.Endpoints)
	}
	a.log.Info("capture rules installed", "engine", a.opts.Engine.Name(), "lockdown", p.Egress != nil, "allowedPrefixes", allowed, "allowedEndpoints", endpoints, "took", time.Since(start).Round(time.Millisecond))
}

// resolution is one host's answer, or the error that kept it.
type resolution struct {
	addrs []netip.Addr
	ttl   time.Duration
	err   error
}

// resolve asks for hosts concurrently (bounded, so ten thousand hosts do
// not become ten thousand sockets at once).
func resolveAll(ctx context.Context, r HostResolver, hosts []string) map[string]resolution {
	out := make(map[string]resolution, len(hosts))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, h := range hosts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			addrs, ttl, err := r.Resolve(ctx, h)
			mu.Lock()
			out[h] = resolution{addrs: addrs, ttl: ttl, err: err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// store records resolutions and reports whether the allowed addresses
// changed. A failed resolution keeps the addresses known so far: a
// resolver hiccup must not cut the workload off.
func (a *Agent) store(res map[string]resolution) bool {
	changed := false
	now := time.Now()
	for h, r := range res {
		e := a.hosts[h]
		if e == nil {
			e = &hostEntry{}
			a.hosts[h] = e
			changed = true
		}
		if r.err != nil {
			a.metrics.resolveFailures.Inc()
			a.log.Warn("resolving an external host failed; keeping its last addresses", "host", h, "addresses", len(e.addrs), "err", r.err)
			e.expires = now.Add(a.opts.MinRefresh)
			continue
		}
		ttl := min(max(r.ttl, a.opts.MinRefresh), a.opts.MaxRefresh)
		e.expires = now.Add(ttl)
		addrs := slices.Clone(r.addrs)
		slices.SortFunc(addrs, netip.Addr.Compare)
		addrs = slices.Compact(addrs)
		if !slices.Equal(addrs, e.addrs) {
			// The proxy may still connect to an address of the previous
			// answer (it caches on its own schedule): allow both for one
			// more period.
			e.prev, e.addrs = e.addrs, addrs
			changed = true
		} else if len(e.prev) > 0 {
			e.prev = nil
			changed = true
		}
	}
	return changed
}

// forget drops hosts the current snapshot no longer names.
func (a *Agent) forget() {
	keep := hostsOf(a.cur)
	for h := range a.hosts {
		if _, found := slices.BinarySearch(keep, h); !found {
			delete(a.hosts, h)
		}
	}
}

func (a *Agent) resolvedAddrs() map[string][]netip.Addr {
	out := make(map[string][]netip.Addr, len(a.hosts))
	for h, e := range a.hosts {
		out[h] = append(slices.Clone(e.addrs), e.prev...)
	}
	return out
}

// refreshHosts starts, in the background, the resolution of hosts whose
// answers expired.
func (a *Agent) refreshHosts(ctx context.Context, done chan<- map[string]resolution) {
	if a.resolving {
		return
	}
	now := time.Now()
	var due []string
	for h, e := range a.hosts {
		if !now.Before(e.expires) {
			due = append(due, h)
		}
	}
	if len(due) == 0 {
		return
	}
	a.resolving = true
	r := a.opts.Resolver
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		done <- resolveAll(rctx, r, due)
	}()
}

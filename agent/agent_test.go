package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/redirect"
)

// fakeSource hands out snapshots pushed by the test.
type fakeSource struct {
	current *mesh.AgentSnapshot
	updates chan *mesh.AgentSnapshot
}

func newFakeSource(persisted *mesh.AgentSnapshot) *fakeSource {
	return &fakeSource{current: persisted, updates: make(chan *mesh.AgentSnapshot, 1)}
}
func (s *fakeSource) Run(ctx context.Context) error               { <-ctx.Done(); return nil }
func (s *fakeSource) Current() *mesh.AgentSnapshot                { return s.current }
func (s *fakeSource) Updates() <-chan *mesh.AgentSnapshot         { return s.updates }
func (s *fakeSource) push(t *testing.T, snap *mesh.AgentSnapshot) { t.Helper(); s.updates <- snap }

// fakeEngine records installs and reports drift when told to.
type fakeEngine struct {
	mu          sync.Mutex
	installed   *redirect.Plan
	installs    int
	drift       []string
	uninstalled bool
	// fail, when set, is what every Install returns.
	fail error
}

func (e *fakeEngine) Name() string { return "fake" }
func (e *fakeEngine) Render(context.Context, *redirect.Plan) (map[string]string, error) {
	return nil, nil
}
func (e *fakeEngine) Install(_ context.Context, p *redirect.Plan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.installs++
	if e.fail != nil {
		return e.fail
	}
	e.installed, e.drift = p.Clone(), nil
	return nil
}
func (e *fakeEngine) Uninstall(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.installed, e.uninstalled = nil, true
	return nil
}
func (e *fakeEngine) Status(context.Context) (*redirect.Status, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return &redirect.Status{Engine: "fake", Installed: e.installed != nil, Plan: e.installed, Drift: e.drift}, nil
}
func (e *fakeEngine) state() (*redirect.Plan, int, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.installed, e.installs, e.uninstalled
}

type fakeResolver map[string][]netip.Addr

func (r fakeResolver) Resolve(_ context.Context, host string) ([]netip.Addr, time.Duration, error) {
	return r[host], time.Minute, nil
}

func basePlan(t *testing.T) *redirect.Plan {
	t.Helper()
	cfg := redirect.NewConfig()
	if err := cfg.Set("meshCidrs", "10.244.0.0/16", "test"); err != nil {
		t.Fatal(err)
	}
	p, err := cfg.Plan(fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type fakeHost struct{}

func (fakeHost) ReadFile(string) ([]byte, error)    { return []byte("nameserver 10.96.0.10\n"), nil }
func (fakeHost) LookupUser(string) (uint32, error)  { return 5678, nil }
func (fakeHost) LookupGroup(string) (uint32, error) { return 5678, nil }

var (
	vip1 = netip.MustParseAddr("240.0.0.1")
	vip2 = netip.MustParseAddr("240.0.0.2")
)

func startAgent(t *testing.T, src Source, eng redirect.Engine, res HostResolver) *Agent {
	t.Helper()
	return startAgentWith(t, src, eng, res, func(*Options) {})
}

func startAgentWith(t *testing.T, src Source, eng redirect.Engine, res HostResolver, edit func(*Options)) *Agent {
	t.Helper()
	opts := Options{
		Source:            src,
		Engine:            eng,
		Plan:              basePlan(t),
		DNS:               dnsproxy.Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, UDPSockets: 1},
		Resolver:          res,
		VIPRanges:         []netip.Prefix{netip.MustParsePrefix(mesh.DefaultVIPv4CIDR)},
		ReconcileInterval: 50 * time.Millisecond,
		CleanupOnExit:     true,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	edit(&opts)
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-a.DNS().Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("DNS interceptor never listened")
	}
	return a
}

// lookup asks the agent's DNS interceptor for name's A records.
func lookup(t *testing.T, a *Agent, name string) []string {
	t.Helper()
	var addr string
	for _, x := range a.DNS().Addrs() {
		if x.Network() == "udp" {
			addr = x.String()
		}
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	in, err := dns.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	var out []string
	for _, rr := range in.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSnapshotsDriveNamesAndLockdown(t *testing.T) {
	src := newFakeSource(nil)
	eng := &fakeEngine{}
	res := fakeResolver{"httpbin.org": {netip.MustParseAddr("203.0.113.7")}}
	a := startAgent(t, src, eng, res)

	// Before any snapshot: the user's plan, no lockdown, not ready.
	eventually(t, "the base plan", func() bool { p, _, _ := eng.state(); return p != nil })
	if p, _, _ := eng.state(); p.Egress != nil {
		t.Fatalf("egress locked down before the mesh said so: %v", p.Egress)
	}
	if ok, why := a.Ready(); ok || !strings.Contains(why, "snapshot") {
		t.Fatalf("ready without a snapshot (%v, %q)", ok, why)
	}

	src.push(t, &mesh.AgentSnapshot{Version: "1", Names: map[string][]netip.Addr{"httpbin.mesh": {vip1}}, Passthrough: true})
	eventually(t, "httpbin.mesh to resolve", func() bool { return slices.Equal(lookup(t, a, "httpbin.mesh"), []string{"240.0.0.1"}) })
	if ok, why := a.Ready(); !ok {
		t.Fatalf("not ready after a snapshot: %s", why)
	}

	// Passthrough off: only endpoints, resolved hosts and VIPs are allowed.
	// AllowedEgress is what a snapshot persisted by an earlier version
	// holds: its addresses stay open on every port.
	src.push(t, &mesh.AgentSnapshot{
		Version:          "2",
		Names:            map[string][]netip.Addr{"httpbin.mesh": {vip1}, "httpbin.org": {vip2}},
		AllowedEgress:    []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32")},
		AllowedEndpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.11:8443")},
		DNSHosts:         []mesh.DNSHost{{Host: "httpbin.org", Port: 443}},
	})
	eventually(t, "httpbin.org to resolve", func() bool { return slices.Equal(lookup(t, a, "httpbin.org"), []string{"240.0.0.2"}) })
	p, _, _ := eng.state()
	if p.Egress == nil {
		t.Fatal("passthrough disabled but egress not locked down")
	}
	want := []string{"192.0.2.10/32", "240.0.0.0/4"}
	var got []string
	for _, x := range p.Egress.Allowed {
		got = append(got, x.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("allowed egress %v, want %v", got, want)
	}
	// Endpoints keep their port; a resolved host gets its cluster's.
	wantEP := []string{"192.0.2.11:8443", "203.0.113.7:443"}
	got = nil
	for _, x := range p.Egress.Endpoints {
		got = append(got, x.String())
	}
	if !slices.Equal(got, wantEP) {
		t.Errorf("allowed endpoints %v, want %v", got, wantEP)
	}
	if len(p.MeshCIDRs) != 1 || p.MeshCIDRs[0].String() != "10.244.0.0/16" {
		t.Errorf("mesh CIDRs %v lost", p.MeshCIDRs)
	}

	// Passthrough back on lifts the lockdown.
	src.push(t, &mesh.AgentSnapshot{Version: "3", Names: map[string][]netip.Addr{"httpbin.mesh": {vip1}}, Passthrough: true})
	eventually(t, "lockdown lifted", func() bool { p, _, _ := eng.state(); return p.Egress == nil })
	if got := lookup(t, a, "httpbin.org"); len(got) != 0 {
		// Not a mesh name any more: forwarded, and with no upstream, no answer.
		t.Errorf("httpbin.org still answered from the table: %v", got)
	}
}

// TestTableFollowsSnapshotWhenInstallFails pins the choice docs/agent.md
// explains: a mesh name answers its VIP even while the rules cannot be
// installed. VIP traffic reaches the proxy or nothing, whereas a name held
// back from the table would be forwarded upstream and answered with a real
// address the app could reach around the mesh's policy.
func TestTableFollowsSnapshotWhenInstallFails(t *testing.T) {
	src := newFakeSource(nil)
	eng := &fakeEngine{fail: errors.New("iptables-restore: line 3 failed")}
	a := startAgent(t, src, eng, fakeResolver{})
	src.push(t, &mesh.AgentSnapshot{Version: "1", Names: map[string][]netip.Addr{"httpbin.mesh": {vip1}}})
	eventually(t, "httpbin.mesh to resolve", func() bool { return slices.Equal(lookup(t, a, "httpbin.mesh"), []string{"240.0.0.1"}) })
	if _, n, _ := eng.state(); n == 0 {
		t.Fatal("no install was tried")
	}
	if ok, why := a.Ready(); ok || !strings.Contains(why, "capture rules not in place: iptables-restore") {
		t.Errorf("ready while the rules failed (%v, %q)", ok, why)
	}
}

// TestOnTableFollowsTheInterceptor: every table the interceptor takes is
// handed on, the same table, in the same order.
func TestOnTableFollowsTheInterceptor(t *testing.T) {
	src := newFakeSource(nil)
	var mu sync.Mutex
	var got []*dnsproxy.Table
	a := startAgentWith(t, src, &fakeEngine{}, fakeResolver{}, func(o *Options) {
		o.OnTable = func(tb *dnsproxy.Table) { mu.Lock(); got = append(got, tb); mu.Unlock() }
	})
	for i, names := range []map[string][]netip.Addr{{"a.mesh": {vip1}}, {"a.mesh": {vip1}, "b.mesh": {vip2}}} {
		src.push(t, &mesh.AgentSnapshot{Version: strconv.Itoa(i + 1), Names: names, Passthrough: true})
		eventually(t, "the table to be handed on", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == i+1 })
		mu.Lock()
		last := got[i]
		mu.Unlock()
		if last != a.DNS().Table() || last.Len() != len(names) {
			t.Fatalf("snapshot %d: handed on a table of %d names, not the interceptor's", i+1, last.Len())
		}
	}
}

// TestHeldDNSPortIsNamedAndRetried: another socket holds the interceptor's
// port when the agent starts. The agent must not exit: it says who holds the
// port, stays unready, and listens as soon as the port is free.
func TestHeldDNSPortIsNamedAndRetried(t *testing.T) {
	squat, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := netip.MustParseAddrPort(squat.LocalAddr().String())
	a, err := New(Options{
		Source:            newFakeSource(&mesh.AgentSnapshot{Version: "1", Passthrough: true, Names: map[string][]netip.Addr{"httpbin.mesh": {vip1}}}),
		Engine:            &fakeEngine{},
		Plan:              basePlan(t),
		DNS:               dnsproxy.Config{Listen: []netip.AddrPort{port}, UDPSockets: 1},
		Resolver:          fakeResolver{},
		ReconcileInterval: 50 * time.Millisecond,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	want := fmt.Sprintf("held by pid %d", os.Getpid())
	eventually(t, "readiness to name the holder", func() bool { _, why := a.Ready(); return strings.Contains(why, want) })
	select {
	case err := <-done:
		t.Fatalf("the agent exited while the port was held: %v", err)
	default:
	}
	squat.Close()
	eventually(t, "the interceptor to take the port", func() bool {
		ok, _ := a.Ready()
		return ok
	})
	if got := lookup(t, a, "httpbin.mesh"); !slices.Equal(got, []string{"240.0.0.1"}) {
		t.Errorf("httpbin.mesh = %v after the port was freed", got)
	}
}

func TestDriftIsRepaired(t *testing.T) {
	src := newFakeSource(&mesh.AgentSnapshot{Version: "p", Passthrough: true, Names: map[string][]netip.Addr{"httpbin.mesh": {vip1}}})
	eng := &fakeEngine{}
	a := startAgent(t, src, eng, fakeResolver{})
	eventually(t, "install", func() bool { _, n, _ := eng.state(); return n == 1 })

	eng.mu.Lock()
	eng.drift = []string{"ipv4 nat: missing -A SHUNT_OUTPUT -p tcp -j SHUNT_OUTBOUND_REDIRECT"}
	eng.mu.Unlock()
	eventually(t, "the drift to be repaired", func() bool { _, n, _ := eng.state(); return n == 2 })

	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if body := rec.Body.String(); !strings.Contains(body, "shunt_capture_drift_repairs_total 1") {
		t.Errorf("drift repair not counted:\n%s", grep(body, "shunt_capture"))
	}
}

func TestPersistedSnapshotServedAtOnce(t *testing.T) {
	src := newFakeSource(&mesh.AgentSnapshot{Version: "persisted", Names: map[string][]netip.Addr{"httpbin.mesh": {vip1}}, Passthrough: true})
	a := startAgent(t, src, &fakeEngine{}, fakeResolver{})
	eventually(t, "ready", func() bool { ok, _ := a.Ready(); return ok })
	if got := lookup(t, a, "httpbin.mesh"); !slices.Equal(got, []string{"240.0.0.1"}) {
		t.Fatalf("persisted name answered %v", got)
	}
}

func TestAdminEndpoints(t *testing.T) {
	src := newFakeSource(&mesh.AgentSnapshot{Version: "v7", Names: map[string][]netip.Addr{"httpbin.mesh": {vip1}}, Passthrough: true})
	a := startAgentWith(t, src, &fakeEngine{}, fakeResolver{}, func(o *Options) {
		o.KernelDNS = func() (KernelDNSStats, error) { return KernelDNSStats{Table: 7, Cache: 3, Missed: 2}, nil }
	})
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	eventually(t, "ready", func() bool { ok, _ := a.Ready(); return ok })
	lookup(t, a, "httpbin.mesh")

	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz %d %s", code, body)
	}
	code, body := get("/snapshot")
	var out struct {
		Snapshot mesh.AgentSnapshot `json:"snapshot"`
		Plan     *redirect.Plan     `json:"installedPlan"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil || code != 200 {
		t.Fatalf("/snapshot %d %v: %s", code, err, body)
	}
	if out.Snapshot.Version != "v7" || out.Snapshot.Names["httpbin.mesh"][0] != vip1 || out.Plan == nil {
		t.Errorf("/snapshot = %s", body)
	}
	_, body = get("/metrics")
	for _, want := range []string{
		`shunt_dns_queries_total{outcome="table",qtype="A"} 1`,
		"shunt_dns_table_names 1",
		`shunt_agent_snapshot_info{version="v7"} 1`,
		"shunt_agent_ready 1",
		"shunt_capture_installed 1",
		`shunt_dns_kernel_queries_total{outcome="table"} 7`,
		`shunt_dns_kernel_queries_total{outcome="cache"} 3`,
		`shunt_dns_kernel_queries_total{outcome="missed"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// fakeProxy is the proxy process's status as envoy/supervisor reports it.
type fakeProxy struct {
	mu       sync.Mutex
	ready    bool
	up       bool
	restarts uint64
}

func (p *fakeProxy) Ready() (bool, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ready {
		return false, "proxy /ready: 503 INITIALIZING"
	}
	return true, ""
}
func (p *fakeProxy) Up() bool         { p.mu.Lock(); defer p.mu.Unlock(); return p.up }
func (p *fakeProxy) Restarts() uint64 { p.mu.Lock(); defer p.mu.Unlock(); return p.restarts }

func TestProxyGatesReadinessAndIsMeasured(t *testing.T) {
	src := newFakeSource(&mesh.AgentSnapshot{Version: "v1", Passthrough: true})
	proxy := &fakeProxy{up: true, restarts: 2}
	a := startAgentWith(t, src, &fakeEngine{}, fakeResolver{}, func(o *Options) { o.Proxy = proxy })
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Everything else is in place: only the proxy holds readiness back.
	eventually(t, "capture installed", func() bool { return a.captureOK.Load() })
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "proxy /ready: 503 INITIALIZING") {
		t.Errorf("/readyz with the proxy initializing: %d %q", code, body)
	}
	_, body := get("/metrics")
	for _, want := range []string{"shunt_proxy_up 1", "shunt_proxy_restarts_total 2", "shunt_agent_ready 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	proxy.mu.Lock()
	proxy.ready, proxy.restarts = true, 3
	proxy.mu.Unlock()
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz with the proxy live: %d %q", code, body)
	}
	_, body = get("/metrics")
	for _, want := range []string{"shunt_proxy_restarts_total 3", "shunt_agent_ready 1"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestNoProxyNoProxyMetrics(t *testing.T) {
	a := startAgent(t, newFakeSource(&mesh.AgentSnapshot{Version: "v1", Passthrough: true}), &fakeEngine{}, fakeResolver{})
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if strings.Contains(rec.Body.String(), "shunt_proxy_") {
		t.Errorf("proxy metrics without a proxy:\n%s", grep(rec.Body.String(), "shunt_proxy_"))
	}
}

func TestCleanupOnExit(t *testing.T) {
	eng := &fakeEngine{}
	a, err := New(Options{Source: newFakeSource(nil), Engine: eng, Plan: basePlan(t), CleanupOnExit: true,
		DNS:    dnsproxy.Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, UDPSockets: 1},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	eventually(t, "install", func() bool { _, n, _ := eng.state(); return n == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, gone := eng.state(); !gone {
		t.Error("rules left in place with CleanupOnExit")
	}
}

func TestUpstreamResolverTTL(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			rr1, _ := dns.NewRR(q.Question[0].Name + " 30 IN A 203.0.113.1")
			rr2, _ := dns.NewRR(q.Question[0].Name + " 12 IN A 203.0.113.2")
			m.Answer = append(m.Answer, rr1, rr2)
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	defer func() { _ = srv.Shutdown() }()
	r := &UpstreamResolver{Upstreams: []netip.AddrPort{netip.MustParseAddrPort(pc.LocalAddr().String())}}
	addrs, ttl, err := r.Resolve(context.Background(), "httpbin.org")
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 2 || ttl != 12*time.Second {
		t.Errorf("got %v ttl %v, want two addresses and the smallest TTL, 12s", addrs, ttl)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Package capture compares the cost of shunt's capture engines on one
// machine in one run: request/response latency over a persistent
// connection, new connections per second (and the life of one connection)
// and bulk throughput, all through the HAProxy proxy stand-in, with no
// capture (the application dials HAProxy's own fixed-server listener), with
// shunt's iptables engine and with shunt's eBPF engine, both applying the
// same plan: shunt's default one (inbound captured, DNS to the resolvers of
// resolv.conf, both families).
//
//	SHUNT_BENCH=1 go test -run TestCompare -v -timeout 15m ./bench/capture/
//
// Every configuration uses the same pod namespace, cgroup, HAProxy process,
// servers and client binary; only what is installed differs. Each round runs
// every configuration once, in an order that rotates from round to round, so
// a change in the machine's load falls on all of them alike. The client runs
// on CPU 0, HAProxy and the servers on CPU 1.
package capture

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/iptables"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
	"github.com/shunt-dev/shunt/tests/testenv"
)

func TestMain(m *testing.M) {
	ebpftest.Main()
	os.Exit(m.Run())
}

const (
	rounds     = 5
	rrSeconds  = "3"
	cpsSeconds = "3"
	cpsWorkers = "4"
	bulkMB     = "500"
	clientCPU  = "0"
	serverCPU  = "1"
	manyCIDRs  = 10000
)

type figures struct {
	rr, cps, bulk ebpftest.BenchResult
}

// config is one thing measured: what to install before, what to remove after.
type config struct {
	name     string
	echo     string
	sink     string
	setup    func() error
	teardown func() error
}

func measure(t *testing.T, pod *ebpftest.Pod, c config) figures {
	t.Helper()
	run := func(args ...string) ebpftest.BenchResult {
		argv := ebpftest.Pinned(clientCPU, pod.Helper(append([]string{"bench"}, args...)...))
		out, err := pod.RunInPod(ebpftest.AppUID, ebpftest.AppUID, argv...)
		if err != nil {
			t.Fatalf("%s: bench %v: %v\n%s", c.name, args, err, out)
		}
		var r ebpftest.BenchResult
		line := out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("bench output %q: %v", out, err)
		}
		if r.Errors > 0 {
			t.Logf("%s: bench %v: %d errors", c.name, args, r.Errors)
		}
		return r
	}
	return figures{
		rr:   run("rr", c.echo, "1", rrSeconds),
		cps:  run("cps", c.echo, cpsWorkers, cpsSeconds),
		bulk: run("bulk", c.sink, bulkMB),
	}
}

// defaultPlan is shunt's default plan (redirect.NewConfig's defaults) with
// the pod's resolver in a resolv.conf of its own.
func defaultPlan(t *testing.T) *redirect.Plan {
	t.Helper()
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte("nameserver 10.1.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := redirect.NewConfig()
	if err := c.Set("resolvConf", rc, "bench"); err != nil {
		t.Fatal(err)
	}
	p, err := c.Plan(redirect.OSHost{})
	if err != nil {
		t.Fatal(err)
	}
	if p.ProxyUID != ebpftest.ProxyUID {
		t.Fatalf("default proxy UID %d, HAProxy runs as %d", p.ProxyUID, ebpftest.ProxyUID)
	}
	return p
}

// withCIDRs returns the plan with n excluded outbound /32s that no
// benchmark connection matches, so every lookup walks the whole set.
func withCIDRs(p *redirect.Plan, n int) *redirect.Plan {
	q := p.Clone()
	rng := rand.New(rand.NewPCG(1, 2))
	seen := map[netip.Addr]bool{}
	for len(q.ExcludeOutboundCIDRs) < n {
		a := netip.AddrFrom4([4]byte{100, byte(64 + rng.IntN(64)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		if !seen[a] {
			seen[a] = true
			q.ExcludeOutboundCIDRs = append(q.ExcludeOutboundCIDRs, netip.PrefixFrom(a, 32))
		}
	}
	return q
}

func TestCompare(t *testing.T) {
	if os.Getenv("SHUNT_BENCH") == "" {
		t.Skip("a benchmark of several minutes: set SHUNT_BENCH=1")
	}
	testenv.RequireBinary(t, "iptables-nft-restore")
	testenv.RequireBinary(t, "taskset")
	nft := testenv.RequireBinary(t, "nft")
	ctx := context.Background()
	t.Logf("load at start: %s", loadavg())

	pod := ebpftest.NewPod(t)
	echo := pod.StartRemoteOn(serverCPU, "echo-server", "10.1.0.2:8080")
	sink := pod.StartRemoteOn(serverCPU, "sink-server", "10.1.0.2:9000")
	ebpftest.WaitOutput(t, echo, "listening")
	ebpftest.WaitOutput(t, sink, "listening")
	pod.HAProxyDirectOn(serverCPU, redirect.DefaultOutboundPort, map[uint16]string{15002: "10.1.0.2:8080", 15003: "10.1.0.2:9000"})

	plan := defaultPlan(t)
	big := withCIDRs(plan, manyCIDRs)
	bigPlus := big.Clone()
	bigPlus.ExcludeOutboundCIDRs = append(bigPlus.ExcludeOutboundCIDRs, netip.MustParsePrefix("198.18.0.0/15"))

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ipt := iptables.New(iptables.Options{NetnsPath: pod.NS.Path(), StateDir: t.TempDir(), LockDir: t.TempDir(), Backend: "nft", Logger: quiet})
	bpf := pod.Engine()
	t.Cleanup(func() {
		_ = ipt.Uninstall(context.Background())
		_ = bpf.Uninstall(context.Background())
	})
	// Removing shunt's chains leaves iptables-nft's base chains, and with
	// them the namespace's conntrack and NAT hooks; the tables go too, so
	// the next configuration does not pay for what this one installed.
	iptOff := func() error {
		if err := ipt.Uninstall(ctx); err != nil {
			return err
		}
		_, err := pod.NS.Run(nft, "flush", "ruleset")
		return err
	}
	bpfOff := func() error { return bpf.Uninstall(ctx) }

	// Install and update times, per engine, one per round.
	times := map[string][]time.Duration{}
	timed := func(key string, f func() error) error {
		start := time.Now()
		err := f()
		times[key] = append(times[key], time.Since(start))
		return err
	}
	const target, sinkTarget = "10.1.0.2:8080", "10.1.0.2:9000"
	configs := []config{
		{name: "direct", echo: "127.0.0.1:15002", sink: "127.0.0.1:15003",
			setup: func() error { return nil }, teardown: func() error { return nil }},
		{name: "iptables", echo: target, sink: sinkTarget,
			setup:    func() error { return timed("iptables install", func() error { return ipt.Install(ctx, plan) }) },
			teardown: iptOff},
		{name: "ebpf", echo: target, sink: sinkTarget,
			setup:    func() error { return timed("ebpf install", func() error { return bpf.Install(ctx, plan) }) },
			teardown: bpfOff},
		{name: "iptables+10k", echo: target, sink: sinkTarget,
			setup: func() error {
				if err := timed("iptables install 10k", func() error { return ipt.Install(ctx, big) }); err != nil {
					return err
				}
				return timed("iptables 10k +1", func() error { return ipt.Install(ctx, bigPlus) })
			},
			teardown: iptOff},
		{name: "ebpf+10k", echo: target, sink: sinkTarget,
			setup: func() error {
				if err := timed("ebpf install 10k", func() error { return bpf.Install(ctx, big) }); err != nil {
					return err
				}
				return timed("ebpf 10k +1", func() error { return bpf.Install(ctx, bigPlus) })
			},
			teardown: bpfOff},
	}

	all := map[string][]figures{}
	var loads []string
	for r := 0; r < rounds; r++ {
		for i := range configs {
			c := configs[(i+r)%len(configs)]
			if err := c.setup(); err != nil {
				t.Fatalf("round %d: %s: %v", r, c.name, err)
			}
			all[c.name] = append(all[c.name], measure(t, pod, c))
			if err := c.teardown(); err != nil {
				t.Fatalf("round %d: %s: remove: %v", r, c.name, err)
			}
		}
		loads = append(loads, loadavg())
		t.Logf("round %d done, load %s", r+1, loads[len(loads)-1])
	}
	t.Log("\n" + report(configs, all, times, loads))
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// stat is the median of one figure over the rounds, with its range.
type stat struct{ med, lo, hi float64 }

func summarise(v []float64) stat {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return stat{med: s[len(s)/2], lo: s[0], hi: s[len(s)-1]}
}

func of(fs []figures, get func(figures) float64) stat {
	v := make([]float64, len(fs))
	for i, f := range fs {
		v[i] = get(f)
	}
	return summarise(v)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func report(configs []config, all map[string][]figures, times map[string][]time.Duration, loads []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "medians of %d interleaved rounds [min–max]; client on CPU %s, HAProxy and servers on CPU %s\n", rounds, clientCPU, serverCPU)
	fmt.Fprintf(&b, "load after each round: %s\n", strings.Join(loads, " | "))
	fmt.Fprintf(&b, "%-13s %-22s %-22s %-22s %-22s %s\n", "path", "rr p50 µs", "rr p99 µs", "conn/s", "conn life p50 µs", "bulk MB/s")
	rr50 := func(f figures) float64 { return us(f.rr.P50) }
	rr99 := func(f figures) float64 { return us(f.rr.P99) }
	cps := func(f figures) float64 { return f.cps.PerSec }
	life := func(f figures) float64 { return us(f.cps.P50) }
	bulk := func(f figures) float64 { return f.bulk.MBPerSec }
	cell := func(s stat) string { return fmt.Sprintf("%.0f [%.0f–%.0f]", s.med, s.lo, s.hi) }
	for _, c := range configs {
		fs := all[c.name]
		fmt.Fprintf(&b, "%-13s %-22s %-22s %-22s %-22s %s\n", c.name,
			cell(of(fs, rr50)), cell(of(fs, rr99)), cell(of(fs, cps)), cell(of(fs, life)), cell(of(fs, bulk)))
	}

	// Per-round figures: the rounds were interleaved, so a configuration
	// is compared with the others of its own round, then the median taken.
	perRound := func(get func(figures) float64, f func(d, e, i float64) float64) stat {
		v := make([]float64, rounds)
		for r := 0; r < rounds; r++ {
			v[r] = f(get(all["direct"][r]), get(all["ebpf"][r]), get(all["iptables"][r]))
		}
		return summarise(v)
	}
	addedRatio := func(d, e, i float64) float64 {
		if i-d <= 0 {
			return 0
		}
		return (e - d) / (i - d)
	}
	added := func(name string, get func(figures) float64) stat {
		v := make([]float64, rounds)
		for r := 0; r < rounds; r++ {
			v[r] = get(all[name][r]) - get(all["direct"][r])
		}
		return summarise(v)
	}
	ratio := func(d, e, i float64) float64 { return e / i }
	f2 := func(s stat) string { return fmt.Sprintf("%.2f [%.2f–%.2f]", s.med, s.lo, s.hi) }
	f1 := func(s stat) string { return fmt.Sprintf("%.1f [%.1f–%.1f]", s.med, s.lo, s.hi) }
	b.WriteString("per-round comparisons (median [min–max] over rounds):\n")
	fmt.Fprintf(&b, "  added rr p50 µs over direct: ebpf %s, iptables %s; ebpf/iptables %s (target ≤ 0.5)\n",
		f1(added("ebpf", rr50)), f1(added("iptables", rr50)), f2(perRound(rr50, addedRatio)))
	fmt.Fprintf(&b, "  added rr p99 µs over direct: ebpf %s, iptables %s; ebpf/iptables %s (target ≤ 0.5)\n",
		f1(added("ebpf", rr99)), f1(added("iptables", rr99)), f2(perRound(rr99, addedRatio)))
	fmt.Fprintf(&b, "  added conn life p50 µs over direct: ebpf %s, iptables %s; ebpf/iptables %s\n",
		f1(added("ebpf", life)), f1(added("iptables", life)), f2(perRound(life, addedRatio)))
	fmt.Fprintf(&b, "  conn/s ebpf/iptables %s (target ≥ 1); bulk ebpf/iptables %s\n",
		f2(perRound(cps, ratio)), f2(perRound(bulk, ratio)))
	fmt.Fprintf(&b, "  %d excluded CIDRs, conn life p50 µs added over the default plan: iptables %s, ebpf %s\n", manyCIDRs,
		f1(pairDiff(all["iptables+10k"], all["iptables"], life)), f1(pairDiff(all["ebpf+10k"], all["ebpf"], life)))
	fmt.Fprintf(&b, "  %d excluded CIDRs, conn/s relative to the default plan: iptables %s, ebpf %s\n", manyCIDRs,
		f2(pairRatio(all["iptables+10k"], all["iptables"], cps)), f2(pairRatio(all["ebpf+10k"], all["ebpf"], cps)))
	keys := make([]string, 0, len(times))
	for k := range times {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b.WriteString("apply times, ms (median [min–max]):\n")
	for _, k := range keys {
		v := make([]float64, len(times[k]))
		for i, d := range times[k] {
			v[i] = float64(d) / float64(time.Millisecond)
		}
		fmt.Fprintf(&b, "  %-22s %s\n", k, f1(summarise(v)))
	}
	return b.String()
}

func pairDiff(a, base []figures, get func(figures) float64) stat {
	v := make([]float64, len(a))
	for i := range a {
		v[i] = get(a[i]) - get(base[i])
	}
	return summarise(v)
}

func pairRatio(a, base []figures, get func(figures) float64) stat {
	v := make([]float64, len(a))
	for i := range a {
		v[i] = get(a[i]) / get(base[i])
	}
	return summarise(v)
}

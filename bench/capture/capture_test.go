// Package capture compares the cost of shunt's capture engines on one
// machine in one run: request/response latency over persistent connections,
// new connections per second and bulk throughput, all through the HAProxy
// proxy stand-in, with no capture (the proxy dialled directly), with eBPF
// capture and with iptables capture.
//
//	SHUNT_BENCH=1 go test -run TestCompare -v -timeout 10m ./bench/capture/
//
// Until redirect/iptables lands, the iptables figures come from the rule
// Kuma and Istio install for outbound TCP, added with `ip netns exec` inside
// the benchmark's own namespace:
//
//	iptables -t nat -A OUTPUT -p tcp -m owner ! --uid-owner 5678 -j REDIRECT --to-ports 15001
package capture

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
	"github.com/shunt-dev/shunt/tests/testenv"
)

func TestMain(m *testing.M) {
	ebpftest.Main()
	os.Exit(m.Run())
}

const (
	rrSeconds  = "4"
	cpsSeconds = "4"
	cpsWorkers = "4"
	bulkMB     = "1000"
)

type figures struct {
	rr, cps, bulk ebpftest.BenchResult
}

func measure(t *testing.T, pod *ebpftest.Pod, echo, sink string) figures {
	t.Helper()
	run := func(args ...string) ebpftest.BenchResult {
		out, err := pod.RunInPod(ebpftest.AppUID, ebpftest.AppUID, pod.Helper(append([]string{"bench"}, args...)...)...)
		if err != nil {
			t.Fatalf("bench %v: %v\n%s", args, err, out)
		}
		var r ebpftest.BenchResult
		line := out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("bench output %q: %v", out, err)
		}
		if r.Errors > 0 {
			t.Logf("bench %v: %d errors", args, r.Errors)
		}
		return r
	}
	return figures{
		rr:   run("rr", echo, "1", rrSeconds),
		cps:  run("cps", echo, cpsWorkers, cpsSeconds),
		bulk: run("bulk", sink, bulkMB),
	}
}

// world is one pod with its remote servers and its HAProxy. Each engine
// gets its own, so that conntrack, which the iptables rules load into their
// namespace, does not tax the other paths.
type world struct {
	pod        *ebpftest.Pod
	echo, sink string
}

func newWorld(t *testing.T) world {
	pod := ebpftest.NewPod(t)
	remote := pod.StartRemote("echo-server", "10.1.0.2:8080")
	sink := pod.StartRemote("sink-server", "10.1.0.2:9000")
	ebpftest.WaitOutput(t, remote, "listening")
	ebpftest.WaitOutput(t, sink, "listening")
	pod.HAProxyDirect(redirect.DefaultOutboundPort, map[uint16]string{15002: "10.1.0.2:8080", 15003: "10.1.0.2:9000"})
	return world{pod: pod, echo: "10.1.0.2:8080", sink: "10.1.0.2:9000"}
}

const rounds = 3

func TestCompare(t *testing.T) {
	if os.Getenv("SHUNT_BENCH") == "" {
		t.Skip("a benchmark of several minutes: set SHUNT_BENCH=1")
	}
	iptables := testenv.RequireBinary(t, "iptables")
	ctx := context.Background()

	direct := newWorld(t)
	direct.echo, direct.sink = "127.0.0.1:15002", "127.0.0.1:15003"

	bpf := newWorld(t)
	plan := ebpftest.Plan()
	plan.CaptureInbound = false
	e := bpf.pod.Engine()
	if err := e.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Uninstall(context.Background()) })

	ipt := newWorld(t)
	rule := []string{"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "owner", "!", "--uid-owner", fmt.Sprint(ebpftest.ProxyUID), "-j", "REDIRECT", "--to-ports", "15001"}
	ipt.pod.NS.MustRun(iptables, rule...)

	all := map[string][]figures{}
	worlds := map[string]world{"direct": direct, "ebpf": bpf, "iptables": ipt}
	order := []string{"direct", "ebpf", "iptables"}
	for r := 0; r < rounds; r++ {
		for _, k := range order {
			w := worlds[k]
			all[k] = append(all[k], measure(t, w.pod, w.echo, w.sink))
		}
	}

	// 10,000 excluded CIDRs: the time to apply them, and the per-connection
	// cost with them in place.
	big := plan.Clone()
	rng := rand.New(rand.NewPCG(1, 2))
	for len(big.ExcludeOutboundCIDRs) < 10000 {
		a := netip.AddrFrom4([4]byte{100, byte(64 + rng.IntN(64)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		big.ExcludeOutboundCIDRs = append(big.ExcludeOutboundCIDRs, netip.PrefixFrom(a, 32))
	}
	start := time.Now()
	if err := e.Install(ctx, big); err != nil {
		t.Fatal(err)
	}
	applyBig := time.Since(start)
	one := big.Clone()
	one.ExcludeOutboundCIDRs = append(one.ExcludeOutboundCIDRs, netip.MustParsePrefix("198.18.0.0/15"))
	start = time.Now()
	if err := e.Install(ctx, one); err != nil {
		t.Fatal(err)
	}
	applyOne := time.Since(start)
	for r := 0; r < rounds; r++ {
		all["ebpf+10k"] = append(all["ebpf+10k"], measure(t, bpf.pod, bpf.echo, bpf.sink))
	}

	results := map[string]figures{}
	for k, fs := range all {
		results[k] = median(fs)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "medians of %d rounds\n", rounds)
	fmt.Fprintf(&b, "%-10s %10s %10s %12s %10s\n", "path", "rr p50", "rr p99", "conn/s", "MB/s")
	for _, k := range []string{"direct", "ebpf", "ebpf+10k", "iptables"} {
		r := results[k]
		fmt.Fprintf(&b, "%-10s %10s %10s %12.0f %10.0f\n", k, r.rr.P50, r.rr.P99, r.cps.PerSec, r.bulk.MBPerSec)
	}
	d, eb, ip := results["direct"], results["ebpf"], results["iptables"]
	added := func(x, base time.Duration) time.Duration { return x - base }
	fmt.Fprintf(&b, "added p50: ebpf %s, iptables %s (ratio %.2f)\n",
		added(eb.rr.P50, d.rr.P50), added(ip.rr.P50, d.rr.P50), ratio(added(eb.rr.P50, d.rr.P50), added(ip.rr.P50, d.rr.P50)))
	fmt.Fprintf(&b, "added p99: ebpf %s, iptables %s (ratio %.2f)\n",
		added(eb.rr.P99, d.rr.P99), added(ip.rr.P99, d.rr.P99), ratio(added(eb.rr.P99, d.rr.P99), added(ip.rr.P99, d.rr.P99)))
	fmt.Fprintf(&b, "conn/s ebpf/iptables %.2f; MB/s ebpf/iptables %.2f\n", eb.cps.PerSec/ip.cps.PerSec, eb.bulk.MBPerSec/ip.bulk.MBPerSec)
	fmt.Fprintf(&b, "10,000 excluded CIDRs: applied in %s; one more CIDR on top in %s\n", applyBig.Round(time.Millisecond), applyOne.Round(time.Millisecond))
	t.Log("\n" + b.String())
}

// median takes each figure's median over the rounds independently.
func median(fs []figures) figures {
	pick := func(get func(figures) float64) figures {
		s := append([]figures(nil), fs...)
		sort.Slice(s, func(i, j int) bool { return get(s[i]) < get(s[j]) })
		return s[len(s)/2]
	}
	var out figures
	out.rr.P50 = pick(func(f figures) float64 { return float64(f.rr.P50) }).rr.P50
	out.rr.P99 = pick(func(f figures) float64 { return float64(f.rr.P99) }).rr.P99
	out.cps = pick(func(f figures) float64 { return f.cps.PerSec }).cps
	out.bulk = pick(func(f figures) float64 { return f.bulk.MBPerSec }).bulk
	return out
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

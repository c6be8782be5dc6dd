package cniscale

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// scalePods can be lowered with SHUNT_BENCH_PODS (at least 10) for a quick
// look.
var scalePods = max(10, envInt("SHUNT_BENCH_PODS", 200))

// agentWindow is how long the node agent's CPU at rest is measured: two of
// its default 10 s scans.
const agentWindow = 20 * time.Second

// TestNodeScale fills a node: scalePods pods added one after another
// through the chain with shunt and kept, one node per engine. Before or
// after each (alternately), a probe pod is added through the bridge-only
// chain and deleted again: the chain's cost at the same fill level and
// under the same load, so that shunt's share can be told from what the
// bridge, host-local and the kernel add as the node fills. The target:
// the median ADD of the last ten pods no more than 1.2x the first ten's.
func TestNodeScale(t *testing.T) {
	requireBench(t)
	b := build(t)
	agentBin := buildAgent(t, b)
	type run struct {
		chain      string
		lat, probe []time.Duration
	}
	var runs []run
	for _, chain := range []string{chainIPT, chainEBPF} {
		ok := t.Run(strings.ReplaceAll(chain, " ", "_"), func(t *testing.T) {
			// A /22: room for every pod's lease.
			n := newNode(t, b, "10.244.44.0/22")
			cgroup := chain == chainEBPF
			if cgroup {
				if err := n.withEBPF(); err != nil {
					t.Skipf("eBPF engine left out: %v", err)
				}
			}
			r := run{chain: chain, lat: make([]time.Duration, 0, scalePods), probe: make([]time.Duration, 0, scalePods)}
			probe := func() {
				p := n.newPod(false)
				r.probe = append(r.probe, p.add(chainBase))
				p.del()
				p.remove()
			}
			start := time.Now()
			for i := 0; i < scalePods; i++ {
				if i%2 == 0 {
					probe()
				}
				p := n.newPod(cgroup)
				r.lat = append(r.lat, p.add(chain))
				if i%2 == 1 {
					probe()
				}
			}
			elapsed := time.Since(start)
			k := len(r.lat)
			first, last := median(r.lat[:10]), median(r.lat[k-10:])
			pFirst, pLast := median(r.probe[:10]), median(r.probe[k-10:])
			t.Logf("%s: %d pods added (and as many bridge-only probes) in %s", chain, k, elapsed.Round(time.Second))
			t.Logf("  ADD with shunt, whole chain: median %.1f ms (p10-p90 %.1f-%.1f); pods 1-10 %.1f ms, %d-%d %.1f ms: %.2fx",
				ms(median(r.lat)), ms(quantile(r.lat, 0.1)), ms(quantile(r.lat, 0.9)), ms(first), k-9, k, ms(last), float64(last)/float64(first))
			t.Logf("  ADD bridge-only probe:       median %.1f ms (p10-p90 %.1f-%.1f); pods 1-10 %.1f ms, %d-%d %.1f ms: %.2fx",
				ms(median(r.probe)), ms(quantile(r.probe, 0.1)), ms(quantile(r.probe, 0.9)), ms(pFirst), k-9, k, ms(pLast), float64(pLast)/float64(pFirst))
			sFirst, sLast := shareOf(r.lat[:10], r.probe[:10]), shareOf(r.lat[k-10:], r.probe[k-10:])
			t.Logf("  shunt's share: pods 1-10 %.1f ms (paired p10-p90 %.1f-%.1f), %d-%d %.1f ms (%.1f-%.1f): %.2fx",
				ms(sFirst.median), ms(sFirst.p10), ms(sFirst.p90), k-9, k, ms(sLast.median), ms(sLast.p10), ms(sLast.p90),
				float64(sLast.median)/float64(sFirst.median))
			t.Logf("target: ADD of pods %d-%d <= 1.2x pods 1-10: whole chain %.2fx, shunt's share %.2fx", k-9, k,
				float64(last)/float64(first), float64(sLast.median)/float64(sFirst.median))
			size, files := dirBytes(n.stateDir)
			t.Logf("footprint with %d pods: plugin state %d bytes in %d files (%d per pod)", k, size, files, size/int64(k))
			if cgroup {
				psize, pfiles := dirBytes(n.nodeState)
				pins := 0
				if out, err := exec.Command("find", n.pinDir).Output(); err == nil {
					pins = strings.Count(string(out), "\n")
				}
				t.Logf("footprint with %d pods: node records %d bytes in %d files; %d entries pinned under the node's pin dir", k, psize, pfiles, pins)
			}
			if fi, err := os.Stat(b.shunt); err == nil {
				t.Logf("plugin binary (lean build): %.1f MiB", float64(fi.Size())/(1<<20))
			}
			// The node agent at rest on the filled node, 200 pods enrolled.
			if rss, cpu, err := agentAtRest(t, n, agentBin, chain, agentWindow); err != nil {
				t.Errorf("node agent: %v", err)
			} else {
				t.Logf("node agent (shunt node) at rest with %d pods: RSS %.1f MiB, CPU %.0f ms over %s (%.2f %% of a core)",
					k, float64(rss)/1024, ms(cpu), agentWindow, 100*float64(cpu)/float64(agentWindow))
			}
			runs = append(runs, r)
			// The pods' cleanups delete them, in reverse order.
		})
		if !ok {
			break
		}
	}
	if dir := os.Getenv("SHUNT_BENCH_PLOTS"); dir != "" && len(runs) > 0 {
		var names []string
		var lats [][]time.Duration
		for _, r := range runs {
			names = append(names, r.chain, "bridge-only probes on the "+strings.TrimPrefix(r.chain, "bridge+")+" node")
			lats = append(lats, r.lat, r.probe)
		}
		writeScalePlot(t, dir, names, lats)
	}
}

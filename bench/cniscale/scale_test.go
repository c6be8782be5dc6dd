package cniscale

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// scalePods can be lowered with SHUNT_BENCH_PODS for a quick look.
var scalePods = envInt("SHUNT_BENCH_PODS", 200)

// TestNodeScale adds scalePods pods one after another through the chain
// with shunt, keeping every one, as a node fills up; per engine, on a node
// of its own, one engine after the other. The target: the last ten ADDs'
// median no more than 1.2x the first ten's.
func TestNodeScale(t *testing.T) {
	requireBench(t)
	b := build(t)
	type run struct {
		chain string
		lat   []time.Duration
	}
	var runs []run
	for _, chain := range []string{chainBase, chainIPT, chainEBPF} {
		ok := t.Run(strings.ReplaceAll(chain, " ", "_"), func(t *testing.T) {
			// A /22: room for every pod's lease.
			n := newNode(t, b, "10.244.44.0/22")
			cgroup := chain == chainEBPF
			if cgroup {
				if err := n.withEBPF(); err != nil {
					t.Skipf("eBPF engine left out: %v", err)
				}
			}
			lat := make([]time.Duration, 0, scalePods)
			start := time.Now()
			for i := 0; i < scalePods; i++ {
				p := n.newPod(cgroup)
				lat = append(lat, p.add(chain))
			}
			elapsed := time.Since(start)
			first, last := median(lat[:10]), median(lat[len(lat)-10:])
			t.Logf("%s: %d pods added in %s; ADD median %.1f ms (p10-p90 %.1f-%.1f)", chain, scalePods, elapsed.Round(time.Second),
				ms(median(lat)), ms(quantile(lat, 0.1)), ms(quantile(lat, 0.9)))
			t.Logf("target: ADD of pods %d-%d <= 1.2x pods 1-10: %.1f ms / %.1f ms = %.2fx", scalePods-9, scalePods, ms(last), ms(first), float64(last)/float64(first))
			size, files := dirBytes(n.stateDir)
			t.Logf("footprint with %d pods: plugin state %d bytes in %d files (%d per pod)", scalePods, size, files, size/int64(scalePods))
			if cgroup {
				psize, pfiles := dirBytes(n.nodeState)
				pins := 0
				if out, err := exec.Command("find", n.pinDir).Output(); err == nil {
					pins = strings.Count(string(out), "\n")
				}
				t.Logf("footprint with %d pods: node records %d bytes in %d files; %d entries pinned under the node's pin dir", scalePods, psize, pfiles, pins)
			}
			if fi, err := os.Stat(b.shunt); err == nil {
				t.Logf("plugin binary (lean build): %.1f MiB", float64(fi.Size())/(1<<20))
			}
			runs = append(runs, run{chain, lat})
			// The pods' cleanups delete them, in reverse order.
		})
		if !ok {
			break
		}
	}
	// shunt's share at both ends of the node's filling: the chain's window
	// median minus the bridge-only chain's, same indices.
	if len(runs) > 1 && runs[0].chain == chainBase {
		base := runs[0].lat
		for _, r := range runs[1:] {
			f := median(r.lat[:10]) - median(base[:10])
			l := median(r.lat[len(r.lat)-10:]) - median(base[len(base)-10:])
			t.Logf("shunt's share of ADD, %s: pods 1-10 %.1f ms, pods %d-%d %.1f ms", r.chain, ms(f), len(r.lat)-9, len(r.lat), ms(l))
		}
	}
	if dir := os.Getenv("SHUNT_BENCH_PLOTS"); dir != "" && len(runs) > 0 {
		var names []string
		var lats [][]time.Duration
		for _, r := range runs {
			names = append(names, r.chain)
			lats = append(lats, r.lat)
		}
		writeScalePlot(t, dir, names, lats)
	}
}

package cniscale

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// rounds can be lowered with SHUNT_BENCH_ROUNDS for a quick look.
var rounds = envInt("SHUNT_BENCH_ROUNDS", 20)

const (
	chainBase  = "bridge"
	chainIPT   = "bridge+shunt iptables"
	chainEBPF  = "bridge+shunt ebpf (node)"
	floorName  = "floor: iptables-restore + ip6tables-restore"
	standalone = "shunt install --engine ebpf (standalone, one pod)"
)

// floorScript is the raw restore of exactly the rules the plugin installed
// in a pod: what iptables-nft-save prints there after an ADD, one restore
// per family, under one `ip netns exec`.
func floorScript(t *testing.T, n *node) string {
	t.Helper()
	p := n.newPod(false)
	p.add(chainIPT)
	_, v4 := p.run("", "iptables-nft-save")
	_, v6 := p.run("", "ip6tables-nft-save")
	p.del()
	p.remove()
	if !strings.Contains(v4, "SHUNT_") || !strings.Contains(v6, "SHUNT_") {
		t.Fatalf("no shunt rules in the pod after ADD:\n%s\n%s", v4, v6)
	}
	dir := t.TempDir()
	for fam, rules := range map[string]string{"ipv4": v4, "ipv6": v6} {
		if err := os.WriteFile(filepath.Join(dir, fam), []byte(rules), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("iptables-nft-restore < %s/ipv4 && ip6tables-nft-restore < %s/ipv6", dir, dir)
}

func TestCNIShare(t *testing.T) {
	requireBench(t)
	b := build(t)
	n := newNode(t, b, "10.244.40.0/24")
	ebpfOK := true
	if err := n.withEBPF(); err != nil {
		t.Logf("eBPF engine left out: %v", err)
		ebpfOK = false
	}
	floor := floorScript(t, n)

	type config struct {
		name string
		run  func()
	}
	s, cpu := series{}, series{}
	chain := func(name string, cgroup bool) config {
		return config{name, func() {
			p := n.newPod(cgroup)
			s["ADD "+name] = append(s["ADD "+name], p.add(name))
			cpu["ADD "+name] = append(cpu["ADD "+name], p.cpu)
			s["DEL "+name] = append(s["DEL "+name], p.del())
			cpu["DEL "+name] = append(cpu["DEL "+name], p.cpu)
			p.remove()
		}}
	}
	configs := []config{
		chain(chainBase, false),
		chain(chainIPT, false),
		{floorName, func() {
			p := n.newPod(false)
			d, _ := p.run("", "sh", "-c", floor)
			s[floorName] = append(s[floorName], d)
			cpu[floorName] = append(cpu[floorName], p.cpu)
			p.remove()
		}},
	}
	if ebpfOK {
		configs = append(configs, chain(chainEBPF, true), config{standalone, func() {
			// The engine without the node agent: the pod's own programs,
			// loaded, pinned and attached by a process of its own.
			p := n.newPod(true)
			state := filepath.Join(n.stateDir, "standalone-"+p.name)
			pins := filepath.Join(filepath.Dir(n.pinDir), p.name)
			// --netns rather than `ip netns exec`, which remounts /sys
			// and so hides the cgroup.
			argv := []string{b.shunt, "install", "--netns", p.path(), "--engine", "ebpf", "--cgroup", p.cgroup,
				"--bpf-pin-dir", pins, "--state-dir", state, "--proxy-uid", fmt.Sprint(proxyUID)}
			d, _ := p.runHost(argv...)
			s[standalone] = append(s[standalone], d)
			cpu[standalone] = append(cpu[standalone], p.cpu)
			u, _ := p.runHost(b.shunt, "uninstall", "--netns", p.path(), "--engine", "ebpf", "--cgroup", p.cgroup,
				"--bpf-pin-dir", pins, "--state-dir", state)
			s["uninstall --engine ebpf (standalone)"] = append(s["uninstall --engine ebpf (standalone)"], u)
			p.remove()
		}})
	}
	start := time.Now()
	for r := 0; r < rounds; r++ {
		for i := range configs {
			configs[(i+r)%len(configs)].run()
		}
	}
	t.Logf("%d rounds in %s, a fresh pod namespace each, order rotating; medians (p10-p90)", rounds, time.Since(start).Round(time.Second))

	fl := median(s[floorName])
	names := make([]string, 0, len(s))
	for name := range s {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		m := median(s[name])
		t.Logf("  %-52s %7.1f ms (%5.1f-%5.1f)  %.2fx floor", name, ms(m), ms(quantile(s[name], 0.1)), ms(quantile(s[name], 0.9)), float64(m)/float64(fl))
	}
	shares := []share{}
	for _, c := range []string{chainIPT, chainEBPF} {
		if _, ok := s["ADD "+c]; !ok {
			continue
		}
		for _, op := range []string{"ADD", "DEL"} {
			sh := shareOf(s[op+" "+c], s[op+" "+chainBase])
			sh.name = op + " " + strings.TrimPrefix(c, "bridge+")
			shares = append(shares, sh)
			t.Logf("  shunt's share of %-34s %6.1f ms (paired p10-p90 %5.1f-%5.1f)  %.2fx floor", sh.name, ms(sh.median), ms(sh.p10), ms(sh.p90), float64(sh.median)/float64(fl))
		}
	}
	cfl := median(cpu[floorName])
	t.Logf("CPU time (user+system, every process of the command), medians: floor %.1f ms; standalone eBPF install %.1f ms", ms(cfl), ms(median(cpu[standalone])))
	for _, c := range []string{chainIPT, chainEBPF} {
		for _, op := range []string{"ADD", "DEL"} {
			if _, ok := cpu[op+" "+c]; !ok {
				continue
			}
			sh := shareOf(cpu[op+" "+c], cpu[op+" "+chainBase])
			t.Logf("  shunt's CPU share of %-30s %6.1f ms (paired p10-p90 %5.1f-%5.1f)  %.2fx the floor's CPU", op+" "+strings.TrimPrefix(c, "bridge+"), ms(sh.median), ms(sh.p10), ms(sh.p90), float64(sh.median)/float64(cfl))
		}
	}
	t.Logf("target: shunt's share of ADD (iptables) <= 2x floor (%.1f ms): %.2fx", ms(fl), float64(shares[0].median)/float64(fl))
	if ebpfOK {
		t.Logf("target: shunt's share of ADD (eBPF, node mode) <= 20 ms: %.1f ms; standalone eBPF install of one pod: %.1f ms",
			ms(shares[2].median), ms(median(s[standalone])))
	}
	if ebpfOK {
		if d, err := openNodeTime(n.pinDir, n.nodeState, 20); err == nil {
			t.Logf("of which: opening the node's programs (ebpf.OpenNode, in-process, median of 20): %.1f ms", ms(d))
		}
	}
	size, files := dirBytes(n.stateDir)
	t.Logf("plugin state left after every DEL: %d bytes in %d files", size, files)
	if dir := os.Getenv("SHUNT_BENCH_PLOTS"); dir != "" {
		writeSharePlot(t, dir, s, shares, fl)
	}
}

// share is shunt's part of a chain's time: the median of the chain with
// shunt minus the median without; p10/p90 are of the differences of the
// same round's pair, a measure of the spread.
type share struct {
	name             string
	median, p10, p90 time.Duration
}

func shareOf(with, without []time.Duration) share {
	var diffs []time.Duration
	for i := range with {
		if i < len(without) {
			diffs = append(diffs, with[i]-without[i])
		}
	}
	return share{median: median(with) - median(without), p10: quantile(diffs, 0.1), p90: quantile(diffs, 0.9)}
}

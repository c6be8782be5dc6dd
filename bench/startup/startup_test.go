// Package startup measures what every pod start pays for shunt's capture,
// as an init container runs it: a new process, in a fresh network
// namespace, installing the default plan for both families. Against, in the
// same run:
//
//   - the floor: iptables-restore and ip6tables-restore of exactly the rules
//     shunt installs (its --dry-run output), under one `ip netns exec`;
//
//   - Istio's istio-iptables (built from its module by
//     bench/startup/istio-iptables) for the same plan;
//
//   - shunt's full build, to show what the lean build saves.
//
//     SHUNT_BENCH=1 go test -run TestStartup -v -timeout 30m ./bench/startup/
//
// Each round runs every configuration once, in an order that rotates from
// round to round, each in a namespace of its own made (and removed) outside
// the timing. Medians and ratios are printed; SHUNT_BENCH_PLOTS=DIR writes
// the raw figures there and, where gnuplot is installed, PNG plots.
package startup

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

const rounds = 25

// versionRounds of the commands that only start (no namespace): they take a
// few milliseconds, so many more samples fit in the same time and keep a
// difference of a fraction of a millisecond visible under load.
const versionRounds = 100

// nameserver is the workload's resolver in every namespace: both shunt and
// istio-iptables capture DNS to the resolv.conf nameservers.
const resolvConf = "nameserver 10.0.0.53\nsearch default.svc.cluster.local\n"

type bins struct {
	full, lean, cni, istio string
}

func build(t *testing.T) bins {
	t.Helper()
	dir := t.TempDir()
	b := bins{full: filepath.Join(dir, "shunt"), lean: filepath.Join(dir, "shunt-lean")}
	// Both builds as `make build` ships them: static (no cgo, so no
	// dynamic loader or libc start-up), stripped, without file paths.
	for _, x := range []struct{ out, tags string }{{b.full, ""}, {b.lean, "lean"}} {
		cmd := exec.Command("go", "build", "-trimpath", "-tags", x.tags, "-ldflags", "-s -w", "-o", x.out, testenv.ShuntPackage)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", x.out, err, out)
		}
	}
	// The plugin is the lean build under its installed name.
	b.cni = filepath.Join(dir, "shunt-cni")
	if err := os.Link(b.lean, b.cni); err != nil {
		t.Fatal(err)
	}
	// Istio's command is built in its own module, so shunt's go.mod never
	// names Istio. Without the module proxy the peer is left out.
	istio := filepath.Join(dir, "istio-iptables")
	cmd := exec.Command("go", "build", "-o", istio, ".")
	cmd.Dir = "istio-iptables"
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("istio-iptables not built, left out: %v\n%s", err, out)
	} else {
		b.istio = istio
	}
	return b
}

// netns is a namespace made for one measurement.
type netns struct{ name string }

func newNetns(t *testing.T) netns {
	t.Helper()
	n := netns{name: testenv.UniqueName("shunt-start-")}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(n.remove)
	// A pod's namespace: loopback and an eth0 with an address of each
	// family (istio-iptables refuses to run without a local address); both
	// ends of the veth stay inside.
	for _, argv := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"},
		{"ip", "addr", "add", "10.1.0.5/24", "dev", "eth0"},
		{"ip", "-6", "addr", "add", "fd00:1::5/64", "dev", "eth0", "nodad"},
		{"ip", "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", n.name}, argv...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	// ip netns exec bind-mounts this over /etc/resolv.conf: every command
	// measured reads the same resolver, the way it would in a pod.
	dir := filepath.Join("/etc/netns", n.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(resolvConf), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n netns) remove() {
	_ = exec.Command("ip", "netns", "del", n.name).Run()
	_ = os.RemoveAll(filepath.Join("/etc/netns", n.name))
}

// sample is one command's wall time and CPU time (user + system of the
// process and of the children it waited for). Under load the wall time
// includes waiting for a CPU; the CPU time is what the command itself cost.
type sample struct{ wall, cpu time.Duration }

func sampleOf(cmd *exec.Cmd, wall time.Duration) sample {
	return sample{wall: wall, cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
}

// timed runs argv in the namespace and returns its wall and CPU time.
func timed(t *testing.T, n netns, stdin string, argv ...string) sample {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, argv...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out.String())
	}
	return sampleOf(cmd, d)
}

// timedHost runs argv as a plain new process (no namespace change: what a
// process costs to start), with env added to the environment, and returns
// its wall and CPU time.
func timedHost(t *testing.T, env []string, argv ...string) sample {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
	return sampleOf(cmd, d)
}

// floorScript applies the rules the way a hand-written init script would:
// one restore per family, one after the other, nothing else.
func floorScript(t *testing.T, lean string) string {
	t.Helper()
	n := newNetns(t)
	defer n.remove()
	out, err := exec.Command("ip", "netns", "exec", n.name, lean, "install", "--dry-run").CombinedOutput()
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	parts := map[string]*strings.Builder{}
	var cur *strings.Builder
	for _, l := range strings.SplitAfter(string(out), "\n") {
		switch strings.TrimSpace(l) {
		case "# ipv4", "# ipv6":
			cur = &strings.Builder{}
			parts[strings.TrimSpace(l)[2:]] = cur
			continue
		}
		if cur != nil {
			cur.WriteString(l)
		}
	}
	if parts["ipv4"] == nil || parts["ipv6"] == nil {
		t.Fatalf("dry run did not print both families:\n%s", out)
	}
	dir := t.TempDir()
	for fam, b := range parts {
		if err := os.WriteFile(filepath.Join(dir, fam), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("iptables-nft-restore --noflush < %s/ipv4 && ip6tables-nft-restore --noflush < %s/ipv6", dir, dir)
}

// removalScript is the floor of an uninstall: the restores of exactly the
// removal batch shunt applies (its uninstall --dry-run output), one family
// after the other.
func removalScript(t *testing.T, lean string) string {
	t.Helper()
	n := newNetns(t)
	defer n.remove()
	state := t.TempDir()
	if out, err := exec.Command("ip", "netns", "exec", n.name, lean, "install", "--state-dir", state).CombinedOutput(); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	out, err := exec.Command("ip", "netns", "exec", n.name, lean, "uninstall", "--dry-run", "--state-dir", state).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall dry run: %v\n%s", err, out)
	}
	dir := t.TempDir()
	var cur *os.File
	for _, l := range strings.SplitAfter(string(out), "\n") {
		switch strings.TrimSpace(l) {
		case "# nft ipv4", "# nft ipv6":
			if cur != nil {
				cur.Close()
			}
			if cur, err = os.Create(filepath.Join(dir, strings.Fields(l)[2])); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if cur != nil {
			if _, err := cur.WriteString(l); err != nil {
				t.Fatal(err)
			}
		}
	}
	if cur == nil {
		t.Fatalf("uninstall dry run printed no batch:\n%s", out)
	}
	cur.Close()
	return fmt.Sprintf("iptables-nft-restore --noflush < %s/ipv4 && ip6tables-nft-restore --noflush < %s/ipv6", dir, dir)
}

// nftRemoval is the floor of a removal in one nf_tables transaction, as
// shunt's uninstall now makes it: one `nft -f` deleting exactly shunt's
// jumps (by handle) and chains in both families. Handles differ from
// namespace to namespace, so the script is written for n, outside the
// timing, from what `nft -a list ruleset` shows there.
func nftRemoval(t *testing.T, n netns) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", n.name, "nft", "-a", "list", "ruleset").Output()
	if err != nil {
		t.Fatalf("nft -a list ruleset: %v", err)
	}
	var fam, table, chain string
	var del, flush, drop []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[0] == "table":
			fam, table = f[1], f[2]
		case len(f) >= 2 && f[0] == "chain":
			chain = f[1]
			if strings.HasPrefix(chain, "SHUNT_") && (fam == "ip" || fam == "ip6") {
				flush = append(flush, fmt.Sprintf("flush chain %s %s %s", fam, table, chain))
				drop = append(drop, fmt.Sprintf("delete chain %s %s %s", fam, table, chain))
			}
		case !strings.HasPrefix(chain, "SHUNT_") && strings.Contains(l, "jump SHUNT_") && len(f) >= 2 && f[len(f)-2] == "handle":
			del = append(del, fmt.Sprintf("delete rule %s %s %s handle %s", fam, table, chain, f[len(f)-1]))
		}
	}
	if len(del) == 0 || len(drop) == 0 {
		t.Fatalf("no shunt rules in nft's listing:\n%s", out)
	}
	script := filepath.Join(t.TempDir(), "remove.nft")
	if err := os.WriteFile(script, []byte(strings.Join(append(append(del, flush...), drop...), "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return script
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

type series map[string][]time.Duration

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func quantile(ds []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[int(q*float64(len(s)-1))]
}

func TestStartup(t *testing.T) {
	if os.Getenv("SHUNT_BENCH") == "" {
		t.Skip("benchmark: set SHUNT_BENCH=1")
	}
	testenv.RequireRoot(t)
	for _, b := range []string{"ip", "iptables-nft-restore", "ip6tables-nft-restore"} {
		testenv.RequireBinary(t, b)
	}
	b := build(t)
	floor := floorScript(t, b.lean)
	removal := removalScript(t, b.lean)
	state := t.TempDir()

	type config struct {
		name string
		run  func(n netns) sample
	}
	s, cpu := series{}, series{}
	add := func(name string, x sample) {
		s[name] = append(s[name], x.wall)
		cpu[name] = append(cpu[name], x.cpu)
	}
	install := func(bin string, extra ...string) func(n netns) sample {
		return func(n netns) sample {
			dir := filepath.Join(state, n.name)
			d := timed(t, n, "", append([]string{bin, "install", "--state-dir", dir}, extra...)...)
			if bin == b.lean && len(extra) == 0 {
				// Uninstall is what every pod deletion pays in CNI mode.
				add("shunt uninstall (lean)", timed(t, n, "", bin, "uninstall", "--state-dir", dir))
			}
			return d
		}
	}
	configs := []config{
		{"floor: iptables-restore + ip6tables-restore", func(n netns) sample { return timed(t, n, "", "sh", "-c", floor) }},
		{"shunt install (lean)", install(b.lean)},
		{"floor of uninstall: restores of the removal batch", func(n netns) sample {
			timed(t, n, "", b.lean, "install", "--state-dir", filepath.Join(state, n.name))
			return timed(t, n, "", "sh", "-c", removal)
		}},
	}
	if _, err := exec.LookPath("nft"); err == nil {
		configs = append(configs, config{"floor of uninstall: one nft transaction", func(n netns) sample {
			timed(t, n, "", b.lean, "install", "--state-dir", filepath.Join(state, n.name))
			return timed(t, n, "", "nft", "-f", nftRemoval(t, n))
		}})
	}
	configs = append(configs, []config{
		{"shunt install (full build)", install(b.full)},
		{"shunt install --engine nftables (lean)", install(b.lean, "--engine", "nftables")},
	}...)
	if b.istio != "" {
		// The same plan: outbound to 15001, inbound to 15006 on every
		// port, the proxy's UID 5678 excluded, DNS to the resolv.conf
		// nameservers captured, both families.
		configs = append(configs, config{"istio-iptables", func(n netns) sample {
			return timed(t, n, "", b.istio, "-p", "15001", "-z", "15006", "-u", "5678", "-g", "5678",
				"-m", "REDIRECT", "-i", "*", "-b", "*", "--redirect-dns", "--capture-all-dns=false", "--dual-stack")
		}})
	}
	versions := []config{
		{"shunt version (lean)", func(netns) sample { return timedHost(t, nil, b.lean, "version") }},
		{"shunt version (full build)", func(netns) sample { return timedHost(t, nil, b.full, "version") }},
		{"shunt-cni VERSION (lean)", func(netns) sample { return timedHost(t, []string{"CNI_COMMAND=VERSION"}, b.cni) }},
	}
	if b.istio != "" {
		versions = append(versions, config{"istio-iptables --help", func(netns) sample { return timedHost(t, nil, b.istio, "--help") }})
	}

	load := loadavg()
	for r := 0; r < rounds; r++ {
		for i := range configs {
			c := configs[(i+r)%len(configs)]
			n := newNetns(t)
			add(c.name, c.run(n))
			n.remove()
		}
	}
	for r := 0; r < versionRounds; r++ {
		for i := range versions {
			c := versions[(i+r)%len(versions)]
			add(c.name, c.run(netns{}))
		}
	}

	fl := median(s[configs[0].name])
	t.Logf("%d rounds, fresh namespace each (%d of the start-only commands); load average %s at the start, %s at the end; medians of wall time (p10-p90), ratios to the floor, medians of CPU time", rounds, versionRounds, load, loadavg())
	names := make([]string, 0, len(s))
	for name := range s {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		m := median(s[name])
		t.Logf("  %-48s %7.1f ms (%5.1f-%5.1f)  %.2fx floor  cpu %5.2f ms", name, ms(m), ms(quantile(s[name], 0.1)), ms(quantile(s[name], 0.9)), float64(m)/float64(fl), ms(median(cpu[name])))
	}
	lean := median(s["shunt install (lean)"])
	t.Logf("target: shunt install (lean) <= 2x floor: %.2fx", float64(lean)/float64(fl))
	if b.istio != "" {
		t.Logf("target: shunt install (lean) <= 0.5x istio-iptables: %.2fx", float64(lean)/float64(median(s["istio-iptables"])))
	}
	t.Logf("target: shunt version (lean) < 15 ms: %.1f ms", ms(median(s["shunt version (lean)"])))
	for _, bin := range []struct{ name, path string }{{"lean", b.lean}, {"full build", b.full}} {
		size, initMS, rss := footprint(t, bin.path)
		t.Logf("  %-10s binary %.1f MB, package initialisation %.1f ms (GODEBUG=inittrace=1), max RSS of version %.1f MiB",
			bin.name, float64(size)/1e6, initMS, float64(rss)/1024)
	}
	un := median(s["shunt uninstall (lean)"])
	t.Logf("target: uninstall <= 50 ms: %.1f ms; %.2fx the restores of its removal batch", ms(un), float64(un)/float64(median(s["floor of uninstall: restores of the removal batch"])))
	if nft := s["floor of uninstall: one nft transaction"]; len(nft) > 0 {
		t.Logf("  uninstall %.2fx the same removal in one nft transaction", float64(un)/float64(median(nft)))
	}
	if dir := os.Getenv("SHUNT_BENCH_PLOTS"); dir != "" {
		writePlots(t, dir, s, names, configs[0].name)
	}
}

// footprint is what a build costs before it does anything: its size, the
// clock time of its packages' init functions as the runtime reports them,
// and the peak resident memory of `version`.
func footprint(t *testing.T, bin string) (size int64, initMS float64, rssKiB int64) {
	t.Helper()
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "version")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s version: %v", bin, err)
	}
	// "init PKG @0.1 ms, 0.02 ms clock, 0 bytes, 0 allocs"
	for _, l := range strings.Split(stderr.String(), "\n") {
		f := strings.Fields(l)
		if len(f) >= 7 && f[0] == "init" && f[6] == "clock," {
			var v float64
			if _, err := fmt.Sscanf(f[4], "%g", &v); err == nil {
				initMS += v
			}
		}
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rssKiB = ru.Maxrss
	}
	return fi.Size(), initMS, rssKiB
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

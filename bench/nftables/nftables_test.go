// Package nftables_test measures the nftables capture engine against its
// peers in the same run, in fresh namespaces:
//
//	go test -bench . -benchtime 20x ./bench/nftables
//
// BenchmarkWholeProcessInstall: `shunt install` (the init container's build, as the
// init container ships it) of the default plan (both families) as an init
// container runs it, against `nft -f` of the same
// ruleset and against shunt's iptables engine (targets ≤ 1.2× and ≤ 0.5×).
// BenchmarkExcludedCIDRs: connection cost with 10 and 10,000 excluded
// CIDRs (target: flat) and the time to add one prefix to 10,000 (< 5 ms).
// BenchmarkAddOnePrefix: that change alone, repeated, for -cpuprofile.
package nftables_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/iptables"
	"github.com/shunt-dev/shunt/redirect/nftables"
	"github.com/shunt-dev/shunt/tests/testenv"
)

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// spread is the first and third quartiles, for the logs.
func spread(d []time.Duration) string {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return fmt.Sprintf("[q1 %v, q3 %v, n %d]", s[len(s)/4].Round(10*time.Microsecond), s[3*len(s)/4].Round(10*time.Microsecond), len(s))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkWholeProcessInstall times whole processes, each in a fresh
// namespace entered with nsenter: shunt install with the nftables engine,
// nft -f of the ruleset shunt's --dry-run prints, and shunt install with
// the iptables engine (nft backend).
func BenchmarkWholeProcessInstall(b *testing.B) {
	testenv.RequireRoot(b)
	nft := testenv.RequireBinary(b, "nft")
	testenv.RequireBinary(b, "iptables-nft-restore")
	dir := b.TempDir()
	// The init container's entrypoint is its own build (-tags
	// lean,initcontainer: no agent, no eBPF engine, no CNI plugin), as
	// init-container/build.sh ships it.
	shunt := filepath.Join(dir, "shunt-init")
	if err := testenv.BuildShuntInit(shunt); err != nil {
		b.Fatal(err)
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\nnameserver fd00:10::a\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	common := []string{"--resolv-conf", resolv}
	// The batch for a fresh namespace, which creates the table and
	// deletes nothing, as each measured install is.
	fresh := testenv.NewNetns(b, "bd")
	dry, err := exec.Command("nsenter", append([]string{"--net=" + fresh.Path(), shunt, "install", "--engine", "nftables", "--dry-run"}, common...)...).Output()
	if err != nil {
		b.Fatal(err)
	}
	if strings.Contains(string(dry), "delete table") {
		b.Fatalf("the dry run for a fresh namespace deletes a table:\n%s", dry)
	}
	ruleset := filepath.Join(dir, "shunt.nft")
	if err := os.WriteFile(ruleset, []byte(strings.TrimPrefix(string(dry), "# inet\n")), 0o644); err != nil {
		b.Fatal(err)
	}
	// cpu holds each program's CPU time (user and system, of nsenter
	// and the program it becomes): steadier than wall time on a
	// shared machine, and what a change to the work itself moves.
	cpu := map[*[]time.Duration]*[]time.Duration{}
	run := func(acc *[]time.Duration, n *testenv.Netns, argv ...string) {
		cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path()}, argv...)...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		*acc = append(*acc, time.Since(start))
		if err != nil {
			b.Fatalf("%v: %v\n%s", argv, err, out)
		}
		if cpu[acc] == nil {
			cpu[acc] = new([]time.Duration)
		}
		*cpu[acc] = append(*cpu[acc], cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime())
	}
	// The same two installs with the state directory on tmpfs, as
	// /run is on a node (the CNI plugin's /run/shunt/cni): on this
	// machine's busy ext4 /tmp, creating the directory and the two
	// files of the record costs about 0.2 ms each, which nft -f does
	// not pay.
	shm := tmpfsDir(b)
	var sNft, raw, sIpt, none, sNftShm, sIptShm []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		a, c, d, e := testenv.NewNetns(b, "bn"), testenv.NewNetns(b, "bf"), testenv.NewNetns(b, "bi"), testenv.NewNetns(b, "bt")
		f, g := testenv.NewNetns(b, "bs"), testenv.NewNetns(b, "bj")
		sd1, sd2 := b.TempDir(), b.TempDir()
		sd3, sd4 := filepath.Join(shm, fmt.Sprintf("n%d", i)), filepath.Join(shm, fmt.Sprintf("i%d", i))
		steps := []func(){
			func() {
				run(&sNftShm, f, append([]string{shunt, "install", "--engine", "nftables", "--state-dir", sd3}, common...)...)
			},
			func() {
				run(&sIptShm, g, append([]string{shunt, "install", "--engine", "iptables", "--iptables-backend", "nft", "--state-dir", sd4}, common...)...)
			},
			func() {
				run(&sNft, a, append([]string{shunt, "install", "--engine", "nftables", "--state-dir", sd1}, common...)...)
			},
			func() { run(&raw, c, nft, "-f", ruleset) },
			func() {
				run(&sIpt, d, append([]string{shunt, "install", "--engine", "iptables", "--iptables-backend", "nft", "--state-dir", sd2}, common...)...)
			},
			// shunt's start-up alone: a process that parses the same
			// flags and changes nothing.
			func() {
				run(&none, e, append([]string{shunt, "install", "--engine", "nftables", "--dry-run"}, common...)...)
			},
		}
		b.StartTimer()
		// A new order every round, so that none is always first, nor
		// always right after the same other program: the kernel's
		// deferred clean-up of one program's commits (and the netns work
		// of the iptables programs) falls on whichever runs next. A fixed
		// cyclic order, rotated, kept each program's predecessor and
		// measured the same binary up to 0.6 ms apart in two places.
		for _, j := range rand.Perm(len(steps)) {
			steps[j]()
		}
	}
	b.ReportMetric(ms(median(sNft)), "shunt-nftables-ms")
	b.ReportMetric(ms(median(raw)), "nft-f-ms")
	b.ReportMetric(ms(median(sIpt)), "shunt-iptables-ms")
	b.ReportMetric(ms(median(none)), "shunt-dry-run-ms")
	b.ReportMetric(float64(median(sNft))/float64(median(raw)), "vs-nft-f")
	b.ReportMetric(float64(median(sNft))/float64(median(sIpt)), "vs-iptables")
	b.Logf("median whole-process install: shunt nftables %v, nft -f %v (ratio %.2f, target ≤ 1.2), shunt iptables %v (ratio %.2f, target ≤ 0.5); shunt --dry-run (start-up, no kernel change) %v",
		median(sNft), median(raw), float64(median(sNft))/float64(median(raw)), median(sIpt), float64(median(sNft))/float64(median(sIpt)), median(none))
	b.Logf("quartiles: shunt nftables %s, nft -f %s, shunt iptables %s, --dry-run %s", spread(sNft), spread(raw), spread(sIpt), spread(none))
	b.Logf("CPU time (user + system), medians: shunt nftables %v, nft -f %v (ratio %.2f), shunt iptables %v (ratio %.2f), --dry-run %v",
		median(*cpu[&sNft]), median(*cpu[&raw]), float64(median(*cpu[&sNft]))/float64(median(*cpu[&raw])),
		median(*cpu[&sIpt]), float64(median(*cpu[&sNft]))/float64(median(*cpu[&sIpt])), median(*cpu[&none]))
	b.ReportMetric(ms(median(sNftShm)), "shunt-nftables-tmpfs-ms")
	b.ReportMetric(ms(median(sIptShm)), "shunt-iptables-tmpfs-ms")
	b.Logf("state directory on tmpfs: shunt nftables %v (%s; ratio to nft -f %.2f), shunt iptables %v (%s; ratio %.2f)",
		median(sNftShm), spread(sNftShm), float64(median(sNftShm))/float64(median(raw)), median(sIptShm), spread(sIptShm), float64(median(sNftShm))/float64(median(sIptShm)))
}

// tmpfsDir is a directory on tmpfs (/dev/shm), removed after the benchmark.
func tmpfsDir(b *testing.B) string {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		b.Skipf("/dev/shm is not a tmpfs (%v)", err)
	}
	dir, err := os.MkdirTemp("/dev/shm", "shunt-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// prefixes returns n distinct /32s in 100.64.0.0/10, then extra.
func prefixes(n int, extra ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, n+len(extra))
	for i := 0; i < n; i++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}), 32))
	}
	for _, e := range extra {
		out = append(out, netip.MustParsePrefix(e))
	}
	return out
}

// connectCost is the mean time of a TCP connect and close, from the pod to
// the remote, over many connections.
//
// Each is closed with a reset: a closed connection's port would otherwise
// stay in TIME_WAIT for a minute, and a run of 20 rounds (some 80,000
// connections to one address) runs out of the pod's ephemeral ports.
func connectCost(b *testing.B, pod *testenv.Netns, addr string, n int) time.Duration {
	var took time.Duration
	err := ns.WithNetNSPath(pod.Path(), func(ns.NetNS) error {
		d := net.Dialer{Timeout: 2 * time.Second}
		closeNow := func(c net.Conn) {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
		for i := 0; i < 100; i++ { // warm up
			if c, err := d.Dial("tcp", addr); err == nil {
				closeNow(c)
			}
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return err
			}
			closeNow(c)
		}
		took = time.Since(start) / time.Duration(n)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return took
}

// BenchmarkExcludedCIDRs installs plans excluding 10 and 10,000 CIDRs and
// measures connections whose first packet is looked up in that set (the
// destination is the last excluded prefix, so it leaves directly): with an
// interval set the cost is one lookup whatever the size. The iptables
// engine, one rule per CIDR, is measured alongside. Then one prefix is
// added to the 10,000, which is an element change, not a rewrite.
func BenchmarkExcludedCIDRs(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireBinary(b, "iptables-nft-restore")
	pod, remote := testenv.NewNetns(b, "bcp"), testenv.NewNetns(b, "bcr")
	testenv.Link(b, pod, remote, 1)
	var ln net.Listener
	if err := remote.Do(func() (err error) { ln, err = net.Listen("tcp", "10.1.0.2:8080"); return err }); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cfg := redirect.NewConfig()
	_ = cfg.Set("noDNS", "true", "bench")
	base, err := cfg.Plan(redirect.OSHost{})
	if err != nil {
		b.Fatal(err)
	}
	plan := func(n int, extra ...string) *redirect.Plan {
		p := base.Clone()
		p.ExcludeOutboundCIDRs = prefixes(n, extra...)
		return p
	}
	ctx := context.Background()
	const conns = 2000
	var c10, c10k, ipt10, ipt10k, add []time.Duration
	for i := 0; i < b.N; i++ {
		eng := nftables.New(nftables.Options{NetnsPath: pod.Path(), StateDir: b.TempDir(), LockDir: b.TempDir()})
		ieng := iptables.New(iptables.Options{NetnsPath: pod.Path(), StateDir: b.TempDir(), LockDir: b.TempDir(), Backend: "nft"})
		for _, step := range []struct {
			eng  redirect.Engine
			n    int
			into *[]time.Duration
		}{{eng, 10, &c10}, {eng, 10000, &c10k}, {ieng, 10, &ipt10}, {ieng, 10000, &ipt10k}} {
			b.StopTimer()
			if err := step.eng.Install(ctx, plan(step.n, "10.1.0.2/32")); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			*step.into = append(*step.into, connectCost(b, pod, "10.1.0.2:8080", conns))
			b.StopTimer()
			if step.n == 10000 && step.eng == eng {
				// Each install adds one prefix to the set, as the agent
				// does when the mesh gains an allowed destination.
				extra := []string{"10.1.0.2/32"}
				for j := 0; j < 5; j++ {
					extra = append(extra, fmt.Sprintf("198.51.100.%d/32", 2*j))
					next := plan(10000, extra...)
					// Each change starts after a collection, so that it
					// pays for its own garbage and not for the 10,000-prefix
					// plans and 2,000 connections this benchmark has just
					// made: without it the same changes measured 4.6-6.0
					// ms here, with a spread of 2-10 ms in no order.
					// BenchmarkAddOnePrefix measures the change in a steady
					// state, collections included.
					runtime.GC()
					start := time.Now()
					if err := eng.Install(ctx, next); err != nil {
						b.Fatal(err)
					}
					add = append(add, time.Since(start))
				}
			}
			if err := step.eng.Uninstall(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	b.ReportMetric(us(median(c10)), "nft-10-us/conn")
	b.ReportMetric(us(median(c10k)), "nft-10k-us/conn")
	b.ReportMetric(float64(median(c10k))/float64(median(c10)), "nft-10k-vs-10")
	b.ReportMetric(us(median(ipt10)), "ipt-10-us/conn")
	b.ReportMetric(us(median(ipt10k)), "ipt-10k-us/conn")
	b.ReportMetric(ms(median(add)), "add-one-ms")
	b.Logf("per connection: nftables 10 CIDRs %v, 10,000 %v (ratio %.2f, target flat); iptables 10 %v, 10,000 %v (ratio %.2f); adding one prefix to 10,000: median %v (target < 5ms)",
		median(c10), median(c10k), float64(median(c10k))/float64(median(c10)), median(ipt10), median(ipt10k), float64(median(ipt10k))/float64(median(ipt10)), median(add))
	b.Logf("quartiles: adding one prefix %s", spread(add))
}

// BenchmarkAddOnePrefix is the change path alone: a long-lived engine (the
// agent's) holding 10,000 excluded CIDRs installs a plan with one more
// prefix each iteration. ns/op is one such change, netlink batch and
// record included; run it with -cpuprofile to see where shunt's part goes.
func BenchmarkAddOnePrefix(b *testing.B) {
	testenv.RequireRoot(b)
	pod := testenv.NewNetns(b, "bap")
	cfg := redirect.NewConfig()
	_ = cfg.Set("noDNS", "true", "bench")
	base, err := cfg.Plan(redirect.OSHost{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	eng := nftables.New(nftables.Options{NetnsPath: pod.Path(), StateDir: b.TempDir(), LockDir: b.TempDir()})
	p := base.Clone()
	p.ExcludeOutboundCIDRs = prefixes(10000)
	if err := eng.Install(ctx, p); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = eng.Uninstall(ctx) })
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		next := p.Clone()
		next.ExcludeOutboundCIDRs = append(next.ExcludeOutboundCIDRs,
			netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)}), 32))
		b.StartTimer()
		if err := eng.Install(ctx, next); err != nil {
			b.Fatal(err)
		}
		p = next
	}
}

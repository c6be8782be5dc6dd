package cniscale

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
	shuntebpf "github.com/shunt-dev/shunt/redirect/ebpf"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestTCAttachCost compares the two ways of attaching a program at tc
// ingress of a pod's interface, in this process, each on a fresh veth of a
// fresh namespace: a TCX link (the kernel waits for a normal RCU grace
// period on the attach) and a clsact qdisc plus a cls_bpf filter in
// direct-action mode through rtnetlink (what shunt does). Also the
// detach of each. Medians of SHUNT_BENCH_ROUNDS rounds, order alternating.
//
//	SHUNT_BENCH=1 go test -run TestTCAttachCost -v ./bench/cniscale/
func TestTCAttachCost(t *testing.T) {
	if os.Getenv("SHUNT_BENCH") == "" {
		t.Skip("benchmark: set SHUNT_BENCH=1")
	}
	testenv.RequireRoot(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, -1), // TC_ACT_UNSPEC: the next filter decides
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load a program: %v", err)
	}
	defer prog.Close()

	s := series{}
	for i := 0; i < rounds; i++ {
		for j := 0; j < 2; j++ {
			method := (i + j) % 2
			ns := testenv.NewNetns(t, "tccost")
			dev := testenv.UniqueName("tc")
			ns.MustRun("ip", "link", "add", dev, "type", "veth", "peer", "name", dev+"p")
			ns.MustRun("ip", "link", "set", dev, "up")
			ns.MustRun("ip", "link", "set", dev+"p", "up")
			var attach, detach time.Duration
			if method == 0 {
				attach, detach, err = tcxCost(ns.Path(), dev, prog)
			} else {
				attach, detach, err = clsBPFCost(ns.Path(), dev, prog)
			}
			if err != nil {
				t.Fatal(err)
			}
			name := []string{"TCX link", "clsact + cls_bpf"}[method]
			s["attach "+name] = append(s["attach "+name], attach)
			s["detach "+name] = append(s["detach "+name], detach)
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("%d rounds, a fresh namespace and veth each; load average %s", rounds, load)
	for _, k := range []string{"attach TCX link", "attach clsact + cls_bpf", "detach TCX link", "detach clsact + cls_bpf"} {
		t.Logf("  %-28s %6.2f ms (p10-p90 %6.2f-%6.2f)", k, ms(median(s[k])), ms(quantile(s[k], 0.1)), ms(quantile(s[k], 0.9)))
	}
}

// inNS runs f on a thread in the namespace at path.
func inNS(path string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer func() { _ = netns.Set(orig) }()
	return f()
}

func tcxCost(nsPath, dev string, prog *ebpf.Program) (attach, detach time.Duration, err error) {
	err = inNS(nsPath, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		start := time.Now()
		tl, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach tcx: %w", err)
		}
		attach = time.Since(start)
		start = time.Now()
		err = tl.Close()
		detach = time.Since(start)
		return err
	})
	return
}

func clsBPFCost(nsPath, dev string, prog *ebpf.Program) (attach, detach time.Duration, err error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return 0, 0, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return 0, 0, err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return 0, 0, err
	}
	idx := l.Attrs().Index
	qd := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	f := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
		Fd:           prog.FD(),
		Name:         "bench",
		DirectAction: true,
	}
	start := time.Now()
	if err := h.QdiscAdd(qd); err != nil {
		return 0, 0, fmt.Errorf("add clsact: %w", err)
	}
	if err := h.FilterAdd(f); err != nil {
		return 0, 0, fmt.Errorf("add filter: %w", err)
	}
	attach = time.Since(start)
	start = time.Now()
	if err := h.FilterDel(f); err != nil {
		return 0, 0, fmt.Errorf("delete filter: %w", err)
	}
	if err := h.QdiscDel(qd); err != nil {
		return 0, 0, fmt.Errorf("delete clsact: %w", err)
	}
	detach = time.Since(start)
	return attach, detach, nil
}

// TestEnrolCost times, in this process, what a CNI ADD and DEL of the
// eBPF engine do in node mode: Enrol of a fresh pod (its own namespace
// with a veth, its own cgroup) in node programs loaded once, then Leave.
// Medians of SHUNT_BENCH_ROUNDS rounds.
//
//	SHUNT_BENCH=1 go test -run TestEnrolCost -v ./bench/cniscale/
func TestEnrolCost(t *testing.T) {
	if os.Getenv("SHUNT_BENCH") == "" {
		t.Skip("benchmark: set SHUNT_BENCH=1")
	}
	testenv.RequireRoot(t)
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	opts := shuntebpf.NodeOptions{PinDir: filepath.Join(bpffs, "node"), StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)}
	node, err := shuntebpf.NewNode(opts)
	if err != nil {
		t.Skipf("the node's programs do not load here: %v", err)
	}
	t.Cleanup(func() {
		node.Close()
		_ = shuntebpf.UninstallNode(context.Background(), opts)
	})
	plan := &redirect.Plan{
		ProxyUID: proxyUID, BypassMark: redirect.DefaultBypassMark,
		InboundPort: redirect.DefaultInboundPort, CaptureInbound: true,
		OutboundPort: 15001, DNSPort: redirect.DefaultDNSPort, DNSMode: redirect.DNSNone, IPFamily: redirect.FamilyDual,
	}
	ctx := context.Background()
	s := series{}
	for i := 0; i < rounds; i++ {
		ns := testenv.NewNetns(t, "enrol")
		dev := testenv.UniqueName("en")
		ns.MustRun("ip", "link", "add", dev, "type", "veth", "peer", "name", dev+"p")
		ns.MustRun("ip", "addr", "add", fmt.Sprintf("10.250.%d.2/24", i%250), "dev", dev)
		ns.MustRun("ip", "link", "set", dev, "up")
		cg := testenv.NewCgroup(t)
		start := time.Now()
		if err := node.Enrol(ctx, cg, ns.Path(), plan); err != nil {
			t.Fatalf("enrol: %v", err)
		}
		s["Enrol"] = append(s["Enrol"], time.Since(start))
		start = time.Now()
		if err := node.Leave(ctx, cg); err != nil {
			t.Fatalf("leave: %v", err)
		}
		s["Leave"] = append(s["Leave"], time.Since(start))
	}
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("%d pods, one after another; load average %s", rounds, load)
	for _, k := range []string{"Enrol", "Leave"} {
		t.Logf("  %-6s %6.2f ms (p10-p90 %6.2f-%6.2f)", k, ms(median(s[k])), ms(quantile(s[k], 0.1)), ms(quantile(s[k], 0.9)))
	}
}

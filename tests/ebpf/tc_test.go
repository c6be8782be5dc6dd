package ebpf_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
	shuntebpf "github.com/shunt-dev/shunt/redirect/ebpf"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// shunt's documented place at tc ingress (docs/ebpf.md).
const shuntPrio, shuntHandle = 10, 1

// rtnlIn is an rtnetlink handle in the pod's namespace.
func rtnlIn(t *testing.T, pod *ebpftest.Pod) (*netlink.Handle, netlink.Link) {
	t.Helper()
	ns, err := netns.GetFromPath(pod.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	l, err := h.LinkByName(pod.Host.Dev)
	if err != nil {
		t.Fatal(err)
	}
	return h, l
}

// ingressFilters lists the bpf filters at tc ingress of the pod's
// interface, as "prio/handle name".
func ingressFilters(t *testing.T, h *netlink.Handle, l netlink.Link) []string {
	t.Helper()
	fs, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok {
			out = append(out, fmt.Sprintf("%d/%d %s", bf.Priority, bf.Handle, bf.Name))
		}
	}
	return out
}

func shuntFilter(t *testing.T, h *netlink.Handle, l netlink.Link) *netlink.BpfFilter {
	t.Helper()
	fs, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Priority == shuntPrio && bf.Handle == shuntHandle {
			return bf
		}
	}
	return nil
}

func hasClsact(t *testing.T, h *netlink.Handle, l netlink.Link) bool {
	t.Helper()
	qs, err := h.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			return true
		}
	}
	return false
}

// otherTool is another tool's program at tc ingress: it counts the
// packets it sees and leaves the verdict to the next filter.
type otherTool struct {
	prog  *ebpf.Program
	count *ebpf.Map
}

func newOtherTool(t *testing.T) *otherTool {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TC_ACT_UNSPEC
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load the other tool's program: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return &otherTool{prog: p, count: m}
}

func (o *otherTool) seen(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	if err := o.count.Lookup(uint32(0), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// addFilter puts the program at tc ingress as `tc filter add dev DEV
// ingress prio P handle H bpf da fd FD name NAME` would, creating the
// clsact qdisc first when asked (as `tc qdisc add dev DEV clsact`).
func (o *otherTool) addFilter(t *testing.T, h *netlink.Handle, l netlink.Link, qdisc bool, prio uint16, handle uint32, name string) {
	t.Helper()
	if qdisc {
		if err := h.QdiscAdd(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}); err != nil {
			t.Fatalf("add clsact: %v", err)
		}
	}
	if err := h.FilterAdd(o.filter(l, prio, handle, name)); err != nil {
		t.Fatalf("add filter %s: %v", name, err)
	}
}

func (o *otherTool) filter(l netlink.Link, prio uint16, handle uint32, name string) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: prio, Handle: handle, Protocol: unix.ETH_P_ALL},
		Fd:           o.prog.FD(),
		Name:         name,
		DirectAction: true,
	}
}

// tcCapture is one pod's capture, by the standalone engine or a node.
type tcCapture struct {
	install func()
	status  func() *redirect.Status
	remove  func()
	steered func() uint64
}

func standaloneCapture(t *testing.T, pod *ebpftest.Pod) tcCapture {
	e := pod.Engine()
	ctx := context.Background()
	t.Cleanup(func() { _ = pod.Engine().Uninstall(ctx) })
	return tcCapture{
		install: func() {
			t.Helper()
			if err := e.Install(ctx, ebpftest.Plan()); err != nil {
				t.Fatalf("install: %v", err)
			}
		},
		status: func() *redirect.Status {
			t.Helper()
			st, err := e.Status(ctx)
			if err != nil {
				t.Fatalf("status: %v", err)
			}
			return st
		},
		remove: func() {
			t.Helper()
			if err := e.Uninstall(ctx); err != nil {
				t.Fatalf("uninstall: %v", err)
			}
		},
		steered: func() uint64 {
			t.Helper()
			s, err := e.Stats()
			if err != nil {
				t.Fatal(err)
			}
			return s["inbound steered"]
		},
	}
}

func nodeCapture(t *testing.T, pod *ebpftest.Pod, node *shuntebpf.Node) tcCapture {
	ctx := context.Background()
	return tcCapture{
		install: func() { t.Helper(); pod.Enrol(node, ebpftest.Plan()) },
		status: func() *redirect.Status {
			t.Helper()
			st, err := node.Status(ctx, pod.Cgroup)
			if err != nil {
				t.Fatalf("status: %v", err)
			}
			return st
		},
		remove: func() {
			t.Helper()
			if err := node.Leave(ctx, pod.Cgroup); err != nil {
				t.Fatalf("leave: %v", err)
			}
		},
		steered: func() uint64 {
			t.Helper()
			s, err := node.Stats(pod.Cgroup)
			if err != nil {
				t.Fatal(err)
			}
			return s["inbound steered"]
		},
	}
}

// forEachMode runs f with the standalone engine and with a node.
func forEachMode(t *testing.T, f func(t *testing.T, pod *ebpftest.Pod, c tcCapture)) {
	t.Run("standalone", func(t *testing.T) {
		pod := ebpftest.NewPod(t)
		f(t, pod, standaloneCapture(t, pod))
	})
	t.Run("node", func(t *testing.T) {
		node, _ := ebpftest.NewNode(t)
		pod := ebpftest.NewPod(t)
		f(t, pod, nodeCapture(t, pod, node))
	})
}

// serveInbound starts the proxy's inbound listener (MPTCP, as Go listens:
// only tc ingress steers to it) and an application on 8080, and returns a
// check that a connection from the remote is steered to the listener.
func serveInbound(t *testing.T, pod *ebpftest.Pod, c tcCapture) func() {
	listener := pod.StartInPod(proxy, proxy, pod.Helper("echo-server", "0.0.0.0:15006")...)
	ebpftest.WaitOutput(t, listener, "listening")
	appSrv := pod.StartInPod(app, app, pod.Helper("echo-server", "0.0.0.0:8080")...)
	ebpftest.WaitOutput(t, appSrv, "listening")
	return func() {
		t.Helper()
		before := c.steered()
		argv := pod.Helper("dial", "10.1.0.1:8080", "in")
		out, err := pod.Remote.Run(argv[0], argv[1:]...)
		if err != nil {
			t.Fatalf("inbound dial: %v\n%s", err, out)
		}
		mustContain(t, out, "local=10.1.0.1:8080 remote=10.1.0.2:")
		if n := c.steered(); n != before+1 {
			t.Fatalf("steered %d connections at tc ingress, want %d", n, before+1)
		}
	}
}

// TestTCFilterBesideAnotherTools: another tool's clsact qdisc and its
// cls_bpf filters, one before shunt's place and one after, keep working
// while shunt's filter steers inbound SYNs between them, and are left as
// they were by shunt's uninstall.
func TestTCFilterBesideAnotherTools(t *testing.T) {
	forEachMode(t, func(t *testing.T, pod *ebpftest.Pod, c tcCapture) {
		h, l := rtnlIn(t, pod)
		first, last := newOtherTool(t), newOtherTool(t)
		first.addFilter(t, h, l, true, 5, 1, "other-first")
		last.addFilter(t, h, l, false, 20, 1, "other-last")

		c.install()
		if got, want := strings.Join(ingressFilters(t, h, l), ", "), "5/1 other-first, 10/1 shunt_inbound_tc, 20/1 other-last"; got != want {
			t.Fatalf("tc ingress filters after install: %s, want %s", got, want)
		}
		if st := c.status(); len(st.Drift) > 0 {
			t.Fatalf("drift after install: %v", st.Drift)
		}
		inbound := serveInbound(t, pod, c)
		f0, l0 := first.seen(t), last.seen(t)
		inbound()
		// The filter before shunt's sees every packet; the one after it
		// every packet but the steered SYN (shunt's filter passes the
		// others on).
		if f, l := first.seen(t)-f0, last.seen(t)-l0; f < 3 || l < 2 || l >= f {
			t.Fatalf("during one steered connection the other tool's filters saw %d (before shunt's) and %d (after) packets", f, l)
		}

		c.remove()
		if got, want := strings.Join(ingressFilters(t, h, l), ", "), "5/1 other-first, 20/1 other-last"; got != want {
			t.Fatalf("tc ingress filters after uninstall: %s, want %s", got, want)
		}
		if !hasClsact(t, h, l) {
			t.Fatal("uninstall removed the other tool's clsact qdisc")
		}
		l0 = last.seen(t)
		argv := pod.Helper("dial", "10.1.0.1:8080", "in")
		if out, err := pod.Remote.Run(argv[0], argv[1:]...); err != nil {
			t.Fatalf("dial after uninstall: %v\n%s", err, out)
		}
		if last.seen(t) == l0 {
			t.Fatal("the other tool's filter sees no packet after shunt's uninstall")
		}
	})
}

// TestTCQdiscShuntAdded: the clsact qdisc shunt adds goes with its filter,
// unless another tool's filter was put on it meanwhile.
func TestTCQdiscShuntAdded(t *testing.T) {
	forEachMode(t, func(t *testing.T, pod *ebpftest.Pod, c tcCapture) {
		h, l := rtnlIn(t, pod)
		c.install()
		if got := strings.Join(ingressFilters(t, h, l), ", "); got != "10/1 shunt_inbound_tc+clsact" {
			t.Fatalf("tc ingress filters after install: %s", got)
		}
		c.remove()
		if hasClsact(t, h, l) {
			t.Fatal("the clsact qdisc shunt added is left after uninstall")
		}

		c.install()
		other := newOtherTool(t)
		other.addFilter(t, h, l, false, 20, 1, "other")
		c.remove()
		if got := strings.Join(ingressFilters(t, h, l), ", "); got != "20/1 other" || !hasClsact(t, h, l) {
			t.Fatalf("after uninstall: clsact %v, filters %s; want the other tool's filter on its qdisc", hasClsact(t, h, l), got)
		}

		// An ingress qdisc (the older one, ingress filters only) is used
		// as it is, and kept.
		if err := h.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}); err != nil {
			t.Fatal(err)
		}
		ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
		if err := h.QdiscAdd(ingress); err != nil {
			t.Fatal(err)
		}
		c.install()
		if got := strings.Join(ingressFilters(t, h, l), ", "); got != "10/1 shunt_inbound_tc" {
			t.Fatalf("tc ingress filters on an ingress qdisc: %s", got)
		}
		serveInbound(t, pod, c)()
		c.remove()
		qs, err := h.QdiscList(l)
		if err != nil {
			t.Fatal(err)
		}
		kept := false
		for _, q := range qs {
			kept = kept || q.Type() == "ingress"
		}
		if !kept || len(ingressFilters(t, h, l)) > 0 {
			t.Fatalf("after uninstall: qdiscs %v, filters %v; want the ingress qdisc, empty", qs, ingressFilters(t, h, l))
		}
	})
}

// TestTCFilterDriftIsRepaired: shunt's filter deleted, or made to run
// another program, is drift; installing again restores it. Another tool's
// filter at shunt's place is drift too, and is never replaced.
func TestTCFilterDriftIsRepaired(t *testing.T) {
	forEachMode(t, func(t *testing.T, pod *ebpftest.Pod, c tcCapture) {
		h, l := rtnlIn(t, pod)
		c.install()
		inbound := serveInbound(t, pod, c)
		inbound()
		orig := shuntFilter(t, h, l)
		other := newOtherTool(t)
		driftHas := func(want string) {
			t.Helper()
			st := c.status()
			if !strings.Contains(strings.Join(st.Drift, "\n"), want) {
				t.Fatalf("drift %q does not say %q", st.Drift, want)
			}
		}
		repaired := func() {
			t.Helper()
			c.install()
			got := shuntFilter(t, h, l)
			if got == nil || !strings.HasPrefix(got.Name, "shunt_inbound_tc") {
				t.Fatalf("after a repair tc ingress holds %v", ingressFilters(t, h, l))
			}
			if st := c.status(); len(st.Drift) > 0 {
				t.Fatalf("drift after a repair: %v", st.Drift)
			}
			inbound()
		}

		// Deleted.
		if err := h.FilterDel(&netlink.BpfFilter{FilterAttrs: orig.FilterAttrs, Fd: -1}); err != nil {
			t.Fatal(err)
		}
		driftHas("inbound_tc: no filter at tc ingress of " + pod.Host.Dev)
		repaired()

		// Made to run another program, under shunt's name.
		if err := h.FilterReplace(other.filter(l, shuntPrio, shuntHandle, orig.Name)); err != nil {
			t.Fatal(err)
		}
		driftHas("inbound_tc: the filter at tc ingress of " + pod.Host.Dev)
		repaired()

		// Another tool's filter at shunt's place: reported, kept.
		if err := h.FilterReplace(other.filter(l, shuntPrio, shuntHandle, "other")); err != nil {
			t.Fatal(err)
		}
		driftHas("holds another bpf filter \"other\"")
		c.install()
		if got := shuntFilter(t, h, l); got == nil || got.Name != "other" {
			t.Fatalf("install replaced another tool's filter at shunt's place: %v", ingressFilters(t, h, l))
		}
		if err := h.FilterDel(other.filter(l, shuntPrio, shuntHandle, "")); err != nil {
			t.Fatal(err)
		}
		repaired()
	})
}

// podTCXLink attaches the program at tcx ingress of the pod's interface
// and pins the link where versions before the tc filter pinned it.
func podTCXLink(t *testing.T, pod *ebpftest.Pod, prog *ebpf.Program, pin string) {
	t.Helper()
	if err := pod.NS.Do(func() error {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex(t, pod), Program: prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		defer l.Close()
		return l.Pin(pin)
	}); err != nil {
		t.Fatalf("attach and pin a tcx link: %v", err)
	}
}

func ifindex(t *testing.T, pod *ebpftest.Pod) int {
	_, l := rtnlIn(t, pod)
	return l.Attrs().Index
}

func tcxPrograms(t *testing.T, pod *ebpftest.Pod) int {
	t.Helper()
	n := 0
	if err := pod.NS.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex(t, pod), Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		n = len(res.Programs)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTCXLinksOfEarlierVersions: an installation whose inbound_tc is a
// pinned TCX link (as versions before the tc filter made it) is reported
// as such, moves to a filter when installed again, and uninstalls
// cleanly.
func TestTCXLinksOfEarlierVersions(t *testing.T) {
	// legacy turns the pod's filter into a pinned TCX link running the
	// same program, and returns the pin.
	legacy := func(t *testing.T, pod *ebpftest.Pod, dir string) string {
		t.Helper()
		h, l := rtnlIn(t, pod)
		f := shuntFilter(t, h, l)
		if f == nil {
			t.Fatalf("no shunt filter: %v", ingressFilters(t, h, l))
		}
		prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(f.Id))
		if err != nil {
			t.Fatal(err)
		}
		defer prog.Close()
		pin := filepath.Join(dir, "link_tc_"+pod.Host.Dev)
		podTCXLink(t, pod, prog, pin)
		if err := h.FilterDel(&netlink.BpfFilter{FilterAttrs: f.FilterAttrs, Fd: -1}); err != nil {
			t.Fatal(err)
		}
		return pin
	}
	moved := func(t *testing.T, pod *ebpftest.Pod, pin string) {
		t.Helper()
		h, l := rtnlIn(t, pod)
		if shuntFilter(t, h, l) == nil {
			t.Fatalf("no shunt filter: %v", ingressFilters(t, h, l))
		}
		if n := tcxPrograms(t, pod); n != 0 {
			t.Fatalf("%d programs still attached at tcx ingress", n)
		}
		if _, err := os.Stat(pin); !os.IsNotExist(err) {
			t.Fatalf("the tcx link is still pinned (%v)", err)
		}
	}

	t.Run("standalone", func(t *testing.T) {
		pod := ebpftest.NewPod(t)
		c := standaloneCapture(t, pod)
		c.install()
		pin := legacy(t, pod, pod.PinDir)
		st := c.status()
		if len(st.Drift) > 0 || !strings.Contains(strings.Join(st.Notes, "\n"), "TCX link pinned by an earlier version") {
			t.Fatalf("status of a TCX install: drift %v, notes %v", st.Drift, st.Notes)
		}
		inbound := serveInbound(t, pod, c)
		inbound() // steered by the TCX link
		c.install()
		moved(t, pod, pin)
		inbound()

		legacy(t, pod, pod.PinDir)
		c.remove()
		if n := tcxPrograms(t, pod); n != 0 {
			t.Fatalf("uninstall left %d programs at tcx ingress", n)
		}
		if _, err := os.Stat(pod.PinDir); !os.IsNotExist(err) {
			t.Fatalf("uninstall left the pin directory (%v)", err)
		}
	})

	t.Run("node", func(t *testing.T) {
		node, opts := ebpftest.NewNode(t)
		pod := ebpftest.NewPod(t)
		c := nodeCapture(t, pod, node)
		c.install()
		pods, err := os.ReadDir(filepath.Join(opts.PinDir, "pods"))
		if err != nil || len(pods) != 1 {
			t.Fatalf("pods pinned: %v %v", pods, err)
		}
		podDir := filepath.Join(opts.PinDir, "pods", pods[0].Name())

		// A new build of the node's programs moves the link to a filter.
		pin := legacy(t, pod, podDir)
		info, err := ebpf.LoadPinnedMap(filepath.Join(opts.PinDir, "map_node_info"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := info.Put(uint32(0), [32]byte{}); err != nil { // as if pinned by another build
			t.Fatal(err)
		}
		info.Close()
		node2, err := shuntebpf.NewNode(opts)
		if err != nil {
			t.Fatal(err)
		}
		defer node2.Close()
		moved(t, pod, pin)
		ids, err := node2.ProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		h, l := rtnlIn(t, pod)
		if f := shuntFilter(t, h, l); ebpf.ProgramID(f.Id) != ids["inbound_tc"] {
			t.Fatalf("the filter runs program %d, not the new node's %d", f.Id, ids["inbound_tc"])
		}
		c = nodeCapture(t, pod, node2)
		if st := c.status(); len(st.Drift) > 0 {
			t.Fatalf("drift after the new build: %v", st.Drift)
		}
		inbound := serveInbound(t, pod, c)
		inbound()

		// Enrolling again moves it too, and leaving removes one.
		pin = legacy(t, pod, podDir)
		c.install()
		moved(t, pod, pin)
		legacy(t, pod, podDir)
		c.remove()
		if n := tcxPrograms(t, pod); n != 0 {
			t.Fatalf("leave left %d programs at tcx ingress", n)
		}
		if got := ingressFilters(t, h, l); len(got) > 0 {
			t.Fatalf("leave left filters: %v", got)
		}
	})
}

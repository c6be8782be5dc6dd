package ebpf_test

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/ebpf"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// cgroupProgIDs lists the ids of the programs attached to a cgroup.
func cgroupProgIDs(t *testing.T, bpftool, cg string) []string {
	t.Helper()
	out, err := exec.Command(bpftool, "cgroup", "show", cg).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool cgroup show: %v\n%s", err, out)
	}
	var ids []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] != "ID" {
			ids = append(ids, f[0])
		}
	}
	sort.Strings(ids)
	return ids
}

func nodeCgroupProgIDs(t *testing.T, n *ebpf.Node) []string {
	t.Helper()
	ids, err := n.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for name, id := range ids {
		if name != "inbound_lookup" && name != "inbound_tc" { // attached to the namespace, not the cgroup
			out = append(out, fmt.Sprint(id))
		}
	}
	sort.Strings(out)
	return out
}

// captured dials addr from the pod as uid and reports whether the
// connection went through the proxy whose log is given.
func captured(t *testing.T, pod *ebpftest.Pod, proxyLog interface{ Output() string }, uid int, addr string) bool {
	t.Helper()
	before := strings.Count(proxyLog.Output(), "original/s")
	out, err := pod.RunInPod(uid, uid, pod.Helper("dial", addr, "x")...)
	if err != nil {
		t.Fatalf("uid %d dial %s: %v\n%s", uid, addr, err, out)
	}
	mustContain(t, out, "echo x")
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(proxyLog.Output(), "original/s") > before {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// TestNodeTwoPods: two pods enrolled in one node's programs, each with its
// own plan, are captured each by its own plan and through its own proxy;
// the programs are loaded once; a plan change and a pod leaving touch
// only maps and that pod's links.
func TestNodeTwoPods(t *testing.T) {
	bpftool := testenv.RequireBinary(t, "bpftool")
	node, opts := ebpftest.NewNode(t)
	a, b := ebpftest.NewPodN(t, 1), ebpftest.NewPodN(t, 2)
	ra := a.StartRemote("echo-server", "10.1.0.2:8080", "10.1.0.2:2222")
	rb := b.StartRemote("echo-server", "10.2.0.2:8080", "10.2.0.2:2222")
	ebpftest.WaitOutput(t, ra, "listening 10.1.0.2:2222")
	ebpftest.WaitOutput(t, rb, "listening 10.2.0.2:2222")

	const proxyB, outB = 5679, 15011
	haA := a.HAProxyAs(proxy, redirect.DefaultOutboundPort)
	haB := b.HAProxyAs(proxyB, outB)

	planA := ebpftest.Plan()
	planA.CaptureInbound = false
	planA.ExcludeOutboundPorts = []redirect.PortRange{{First: 2222, Last: 2222}}
	planB := ebpftest.Plan()
	planB.CaptureInbound = false
	planB.ProxyUID = proxyB
	planB.OutboundPort = outB
	a.Enrol(node, planA)
	b.Enrol(node, planB)

	for _, c := range []struct {
		name string
		pod  *ebpftest.Pod
		log  interface{ Output() string }
		uid  int
		addr string
		want bool
	}{
		{"A app", a, haA, app, "10.1.0.2:8080", true},
		{"A excluded port", a, haA, app, "10.1.0.2:2222", false},
		{"A proxy", a, haA, proxy, "10.1.0.2:8080", false},
		{"B app on A's excluded port", b, haB, app, "10.2.0.2:2222", true},
		{"B: A's proxy user is an application here", b, haB, proxy, "10.2.0.2:8080", true},
		{"B proxy", b, haB, proxyB, "10.2.0.2:8080", false},
	} {
		if got := captured(t, c.pod, c.log, c.uid, c.addr); got != c.want {
			t.Fatalf("%s: captured %v, want %v\nA:\n%s\nB:\n%s", c.name, got, c.want, haA.Output(), haB.Output())
		}
	}

	// Loaded once: both cgroups run the node's programs.
	want := nodeCgroupProgIDs(t, node)
	if len(want) != 12 {
		t.Fatalf("node programs: %v", want)
	}
	for _, pod := range []*ebpftest.Pod{a, b} {
		if got := cgroupProgIDs(t, bpftool, pod.Cgroup); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("cgroup %s runs programs %v, want the node's %v", pod.Cgroup, got, want)
		}
	}
	ctx := context.Background()
	for _, pod := range []*ebpftest.Pod{a, b} {
		st, err := node.Status(ctx, pod.Cgroup)
		if err != nil || len(st.Drift) > 0 {
			t.Fatalf("status: %v %v", err, st.Drift)
		}
	}
	if s, err := node.Stats(b.Cgroup); err != nil || s["redirected outbound"] != 2 || s["original destination answered"] != 2 {
		t.Fatalf("B's counters: %v %v", s, err)
	}

	// A plan change for B: map writes only.
	planB2 := planB.Clone()
	planB2.ExcludeOutboundPorts = []redirect.PortRange{{First: 2222, Last: 2222}}
	b.Enrol(node, planB2)
	if captured(t, b, haB, app, "10.2.0.2:2222") {
		t.Fatal("B: port excluded by the changed plan still captured")
	}
	if !captured(t, b, haB, app, "10.2.0.2:8080") {
		t.Fatal("B: not captured after the plan change")
	}
	if got := nodeCgroupProgIDs(t, node); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("programs reloaded by a plan change: %v then %v", want, got)
	}
	if got := cgroupProgIDs(t, bpftool, b.Cgroup); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("B's cgroup runs %v after a plan change, want %v", got, want)
	}
	// Another process (the CNI plugin) opens the same programs, loading
	// none; where nothing is pinned it fails rather than load its own.
	other, err := ebpf.OpenNode(opts)
	if err != nil {
		t.Fatalf("open the node's programs: %v", err)
	}
	if got := nodeCgroupProgIDs(t, other); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("opened programs %v, want %v", got, want)
	}
	other.Close()
	if o, err := ebpf.OpenNode(ebpf.NodeOptions{PinDir: ebpftest.MountBPFFS(t), StateDir: t.TempDir()}); err == nil {
		o.Close()
		t.Fatal("OpenNode succeeded with nothing pinned")
	}

	// A leaves; B is untouched.
	if err := node.Leave(ctx, a.Cgroup); err != nil {
		t.Fatal(err)
	}
	if captured(t, a, haA, app, "10.1.0.2:8080") {
		t.Fatal("A still captured after leaving")
	}
	if got := cgroupProgIDs(t, bpftool, a.Cgroup); len(got) != 0 {
		t.Fatalf("programs left on A's cgroup: %v", got)
	}
	if !captured(t, b, haB, app, "10.2.0.2:8080") {
		t.Fatal("B not captured after A left")
	}
	if err := node.Leave(ctx, a.Cgroup); err != redirect.ErrNotInstalled {
		t.Fatalf("second leave: %v", err)
	}
	// The engine adapter: what CNI and status use.
	st, err := node.Engine(b.Cgroup, b.NS.Path()).Status(ctx)
	if err != nil || len(st.Drift) > 0 || st.Plan == nil || len(st.Plan.ExcludeOutboundPorts) != 1 {
		t.Fatalf("B's status through the engine: %v %+v", err, st)
	}
}

// TestNodeInboundAndDNS: inbound steering and DNS redirection per pod, with
// per-pod ports, in one node's programs.
func TestNodeInboundAndDNS(t *testing.T) {
	node, _ := ebpftest.NewNode(t)
	ctx := context.Background()
	pods := []*ebpftest.Pod{ebpftest.NewPodN(t, 1), ebpftest.NewPodN(t, 2)}
	var listeners []*testenv.Process
	for i, pod := range pods {
		n := i + 1
		inPort, dnsPort := uint16(15006+10*i), uint16(15053+10*i)
		plan := ebpftest.Plan()
		plan.InboundPort = inPort
		plan.DNSPort = dnsPort
		plan.DNSMode = redirect.DNSAll
		pod.Enrol(node, plan)

		argv := pod.Helper("dns-server", fmt.Sprintf("127.0.0.1:%d", dnsPort))
		dns := pod.NS.Start(pod.NS.Command(ctx, argv[0], argv[1:]...))
		ebpftest.WaitOutput(t, dns, "listening")
		listener := pod.StartInPod(proxy, proxy, pod.Helper("echo-server", fmt.Sprintf("0.0.0.0:%d", inPort))...)
		ebpftest.WaitOutput(t, listener, "listening")
		listeners = append(listeners, listener)
		appSrv := pod.StartInPod(app, app, pod.Helper("echo-server", "0.0.0.0:8080")...)
		ebpftest.WaitOutput(t, appSrv, "listening")
		// An MPTCP listener (Go's default) stays out of the SOCKMAP; the
		// tc ingress program steers to it.
		if got, err := node.SyncListener(ctx, pod.Cgroup); err != nil {
			t.Logf("pod %d: listener not in the sk_lookup map: %v", n, err)
		} else if got != 1 {
			t.Fatalf("pod %d: registered %d listeners, want 1", n, got)
		}

		// Inbound: steered to this pod's own listener, which sees the
		// original destination as its address.
		argv = pod.Helper("dial", fmt.Sprintf("10.%d.0.1:8080", n), "in")
		out, err := pod.Remote.Run(argv[0], argv[1:]...)
		if err != nil {
			t.Fatalf("pod %d inbound: %v\n%s", n, err, out)
		}
		mustContain(t, out, fmt.Sprintf("local=10.%d.0.1:8080 remote=10.%d.0.2:", n, n))
		// DNS to any resolver goes to this pod's interceptor port, and the
		// reply comes back from the resolver asked.
		resolver := fmt.Sprintf("10.%d.0.53:53", n)
		out, err = pod.RunInPod(app, app, pod.Helper("dns-udp", "example.com", resolver)...)
		if err != nil {
			t.Fatalf("pod %d dns: %v\n%s", n, err, out)
		}
		mustContain(t, out, "reply id=100 from="+resolver+" answer=192.0.2.53")
	}
	for i, pod := range pods {
		s, err := node.Stats(pod.Cgroup)
		if err != nil {
			t.Fatal(err)
		}
		if s["inbound steered"] != 1 || s["redirected DNS"] < 2 || s["DNS replies restored"] < 2 {
			t.Fatalf("pod %d counters: %v", i+1, s)
		}
	}
	// The first pod leaves and its proxy stops: still captured, its
	// inbound connections would be refused; they reach the application.
	if err := node.Leave(ctx, pods[0].Cgroup); err != nil {
		t.Fatal(err)
	}
	listeners[0].Stop()
	argv := pods[0].Helper("dial", "10.1.0.1:8080", "in")
	out, err := pods[0].Remote.Run(argv[0], argv[1:]...)
	if err != nil {
		t.Fatalf("pod 1 inbound after leaving: %v\n%s", err, out)
	}
	mustContain(t, out, "local=10.1.0.1:8080")
	argv = pods[1].Helper("dial", "10.2.0.1:8080", "in")
	if out, err := pods[1].Remote.Run(argv[0], argv[1:]...); err != nil {
		t.Fatalf("pod 2 inbound: %v\n%s", err, out)
	}
	if s, _ := node.Stats(pods[1].Cgroup); s["inbound steered"] != 2 {
		t.Fatalf("pod 2 not steered after pod 1 left: %v", s)
	}
}

package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/ebpf"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// ebpfNode is a world whose agent runs the eBPF engine: the node's
// programs pinned on a private bpffs, its pod records in a temporary
// directory, and cgroup v2 where the pods' cgroups are made.
type ebpfNode struct {
	*world
	agent      *testenv.Process
	pinDir     string
	nodeState  string
	cgroupRoot string
	bpftool    string
}

func newEBPFNode(t *testing.T) *ebpfNode {
	t.Helper()
	testenv.RequireRoot(t)
	bpftool := testenv.RequireBinary(t, "bpftool")
	testenv.RequireBinary(t, "haproxy")
	testenv.RequireBinary(t, "nsenter")
	testenv.RequireBinary(t, "unshare")
	mnt, err := testenv.Cgroup2Mount()
	if err != nil {
		t.Skipf("cgroup v2 is not mounted: %v", err)
	}
	probe := testenv.NewCgroup(t)
	if err := ebpf.Probe(probe); err != nil {
		t.Skipf("the kernel cannot run shunt's eBPF capture: %v", err)
	}
	w := newWorld(t)
	n := &ebpfNode{
		world:      w,
		pinDir:     filepath.Join(ebpftest.MountBPFFS(t), "shunt", "node"),
		nodeState:  t.TempDir(),
		cgroupRoot: mnt,
		bpftool:    bpftool,
	}
	w.writePluginConf(map[string]any{
		"capture":      map[string]any{"engine": "ebpf", "proxyUID": proxyUID, "outboundPort": 15001},
		"capabilities": map[string]any{"cgroupPath": true},
		"cgroupRoot":   mnt,
	})
	// Registered before the agent starts, so it runs after the agent
	// stopped: every pod left, the programs unpinned, the node restored.
	t.Cleanup(func() {
		out, err := w.node.Command(context.Background(), bins.shunt, append([]string{"node", "--uninstall",
			"--cni-bin-dir", w.binDir, "--cni-conf-dir", w.confDir, "--backup-dir", w.backupDir}, n.nodeFlags()...)...).CombinedOutput()
		if err != nil {
			t.Errorf("shunt node --uninstall: %v\n%s", err, out)
		}
	})
	return n
}

// start runs `shunt node` with the eBPF engine and waits until it chained
// the plugin; it returns the plugin's conflist entry.
func (n *ebpfNode) start(repair string) map[string]any {
	n.t.Helper()
	// As the DaemonSet's pod: the node's network, the host's cgroups (a
	// repair enrols the pod's cgroup); and, unlike the DaemonSet, a
	// throwaway bpffs on /sys/fs/bpf, so that nothing the agent does can
	// pin on the machine's.
	cmd := exec.CommandContext(context.Background(), "unshare", append([]string{"--mount", "--propagation", "private",
		"sh", "-c", `mount -t bpf bpf /sys/fs/bpf && exec "$@"`, "sh",
		"nsenter", "--net=" + n.node.Path(), bins.shunt}, n.agentArgs(append([]string{"--repair", repair}, n.nodeFlags()...)...)...)...)
	agent := testenv.StartProcess(n.t, cmd)
	n.t.Cleanup(func() {
		if n.t.Failed() {
			n.t.Logf("agent output:\n%s", agent.Output())
		}
	})
	n.agent = agent
	conf := n.waitChained(n.agent)
	plugins := conf["plugins"].([]any)
	return plugins[len(plugins)-1].(map[string]any)
}

func (n *ebpfNode) nodeFlags() []string {
	return []string{"--bpf-pin-dir", n.pinDir, "--node-state-dir", n.nodeState}
}

// programIDs are the ids of the node's programs that attach to a cgroup
// (all but sk_lookup, which attaches to the namespace), as the node's pins
// say.
func (n *ebpfNode) programIDs() []string {
	n.t.Helper()
	node, err := ebpf.OpenNode(ebpf.NodeOptions{PinDir: n.pinDir, StateDir: n.nodeState})
	if err != nil {
		n.t.Fatalf("open the node's programs: %v\nagent output:\n%s", err, n.agent.Output())
	}
	defer node.Close()
	ids, err := node.ProgramIDs()
	if err != nil {
		n.t.Fatal(err)
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

// attached lists the ids of the programs attached to a cgroup.
func (n *ebpfNode) attached(cg string) []string {
	n.t.Helper()
	out, err := exec.Command(n.bpftool, "cgroup", "show", cg).CombinedOutput()
	if err != nil {
		n.t.Fatalf("bpftool cgroup show %s: %v\n%s", cg, err, out)
	}
	var ids []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] != "ID" {
			ids = append(ids, f[0])
		}
	}
	sort.Strings(ids)
	return ids
}

// ebpfPod is a pod with a cgroup of its own, which the runtime names to
// the plugin with the cgroupPath capability.
type ebpfPod struct {
	*pod
	n         *ebpfNode
	cgroup    string
	inPod     *testenv.Netns // commands in the pod's namespace and cgroup
	proxyPort int
}

func (n *ebpfNode) newPod(namespace, name string) *ebpfPod {
	n.t.Helper()
	p := &ebpfPod{pod: n.world.newPod(namespace, name), n: n, cgroup: testenv.NewCgroup(n.t), proxyPort: 15001}
	p.inPod = p.ns.InCgroup(p.cgroup)
	return p
}

// cnitool runs one command for the pod as a runtime does: in the node's
// network namespace but the host's mount namespace (the plugin opens the
// pod's cgroup), with kubelet's CNI_ARGS and the cgroupPath capability.
// It runs in a mount namespace of its own with a throwaway bpffs on
// /sys/fs/bpf, so that nothing it does can pin on the machine's.
func (p *ebpfPod) cnitool(command string) (string, error) {
	rel, err := filepath.Rel(p.n.cgroupRoot, p.cgroup)
	if err != nil {
		return "", err
	}
	capArgs, err := json.Marshal(map[string]any{"cgroupPath": "/" + rel})
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", `mount -t bpf bpf /sys/fs/bpf && exec "$@"`, "sh",
		"nsenter", "--net="+p.n.node.Path(), "env",
		"CNI_PATH="+refCNIDir+":"+p.n.binDir,
		"NETCONFPATH="+p.n.confDir,
		"CNI_ARGS="+p.cniArgs(),
		"CNI_IFNAME=eth0",
		"CAP_ARGS="+string(capArgs),
		bins.cnitool, command, network, p.ns.Path())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *ebpfPod) mustCNI(command string) string {
	p.n.t.Helper()
	out, err := p.cnitool(command)
	if err != nil {
		p.n.t.Fatalf("cnitool %s %s/%s: %v\n%s\nagent output:\n%s", command, p.namespace, p.name, err, out, p.n.agent.Output())
	}
	return out
}

func (p *ebpfPod) add() string {
	p.n.t.Helper()
	p.n.t.Cleanup(func() { _, _ = p.cnitool("del") })
	return p.mustCNI("add")
}

// startProxy runs HAProxy as uid in the pod's namespace and cgroup, as a
// sidecar runs: forwarding what it accepts on port to the original
// destination.
func (p *ebpfPod) startProxy(uid, port int) {
	p.n.t.Helper()
	p.proxyPort = port
	p.haproxy = testenv.StartHAProxy(p.n.t, p.inPod, uid, fmt.Sprintf("127.0.0.1:%d", port))
}

// viaProxy GETs the node's port from the pod's cgroup as the application's
// user, asserts the answer, and reports whether the pod's proxy carried the
// connection.
func (p *ebpfPod) viaProxy(port int) bool {
	t := p.n.t
	t.Helper()
	dst := fmt.Sprintf("%s:%d", gatewayIP, port)
	before := strings.Count(p.haproxy.Output(), "-> "+dst)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := fmt.Sprintf("node:%d", port)
	out, err := p.inPod.CommandAs(ctx, appUID, appUID, "curl", "-sS", "--max-time", "4", "http://"+dst+"/").CombinedOutput()
	if err != nil || string(out) != want {
		t.Fatalf("pod %s/%s GET %s = %q, %v; want %q\nproxy log:\n%s", p.namespace, p.name, dst, out, err, want, p.haproxy.Output())
	}
	deadline := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(deadline) {
		if strings.Count(p.haproxy.Output(), "-> "+dst) > before {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// status runs `shunt status` for the pod the way the docs tell an operator
// to, and returns its exit code, its text and, when it printed one, its
// plan.
func (p *ebpfPod) status() (int, string, *redirect.Status) {
	t := p.n.t
	t.Helper()
	args := append([]string{"status", "--engine", "ebpf", "--cgroup", p.cgroup, "--netns", p.ns.Path(),
		"--bpf-pin-dir", p.n.pinDir, "--state-dir", p.n.nodeState}, "-o", "json")
	out, err := exec.Command(bins.shunt, args...).Output()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("shunt status: %v", err)
	}
	var st redirect.Status
	if json.Unmarshal(out, &st) != nil {
		return code, string(out), nil
	}
	return code, string(out), &st
}

// podRecords are the node's records of enrolled pods and the pins of their
// links, named after the pod's cgroup.
func (n *ebpfNode) podRecords(cg string) []string {
	base := filepath.Base(cg)
	var out []string
	for _, pattern := range []string{filepath.Join(n.nodeState, "*"+base+"*"), filepath.Join(n.pinDir, "pods", "*"+base+"*")} {
		out = append(out, globOf(n.t, pattern)...)
	}
	return out
}

// The DaemonSet's eBPF mode end to end: `shunt node` loads the programs
// once; the plugin, run by the runtime with the pod's cgroup, enrols each
// pod in them with the pod's own annotations; CHECK and `shunt status` see
// the enrolment; DEL leaves no trace and may be repeated.
func TestEBPFNodeEnrolsPodsThroughThePlugin(t *testing.T) {
	n := newEBPFNode(t)
	n.api.addNamespace("shop", nil)
	n.api.addPod("shop", "web", nodeName, "", map[string]string{"shunt.dev/exclude-outbound-ports": "8081"})
	n.api.addPod("shop", "api", nodeName, "", map[string]string{
		"shunt.dev/exclude-outbound-ports": "8080",
		"shunt.dev/proxy-uid":              "5679",
		"shunt.dev/outbound-port":          "15011",
	})
	entry := n.start("off")
	if entry["nodePinDir"] != n.pinDir || entry["nodeStateDir"] != n.nodeState {
		t.Fatalf("the conflist entry does not name the agent's pins and records (%s, %s):\n%v", n.pinDir, n.nodeState, entry)
	}
	progs := n.programIDs()
	if len(progs) == 0 {
		t.Fatal("the agent pinned no programs")
	}

	web, api := n.newPod("shop", "web"), n.newPod("shop", "api")
	if out := web.add(); !strings.Contains(out, "10.244.9.") {
		t.Errorf("ADD result lacks the bridge's address:\n%s", out)
	}
	api.add()
	for _, p := range []*ebpfPod{web, api} {
		if got := n.attached(p.cgroup); fmt.Sprint(got) != fmt.Sprint(progs) {
			t.Fatalf("%s/%s: cgroup runs programs %v, want the node's %v", p.namespace, p.name, got, progs)
		}
	}
	if got := n.programIDs(); fmt.Sprint(got) != fmt.Sprint(progs) {
		t.Fatalf("ADD loaded programs: the node's were %v, now %v", progs, got)
	}
	if !n.served("GET /api/v1/namespaces/shop/pods/web") || !n.served("GET /api/v1/namespaces/shop/pods/api") {
		t.Errorf("the plugin did not read the pods' annotations; requests: %v", n.api.seen())
	}

	n.serveOnNode(8080)
	n.serveOnNode(8081)
	web.startProxy(proxyUID, 15001)
	api.startProxy(5679, 15011)
	for _, c := range []struct {
		p    *ebpfPod
		port int
		want bool
	}{
		{web, 8080, true},
		{web, 8081, false}, // excluded by web's annotation
		{api, 8080, false}, // excluded by api's annotation
		{api, 8081, true},  // through api's own proxy, on its own port
	} {
		if got := c.p.viaProxy(c.port); got != c.want {
			t.Errorf("%s/%s: connection to port %d through the proxy = %v, want %v\nproxy log:\n%s\nagent output:\n%s",
				c.p.namespace, c.p.name, c.port, got, c.want, c.p.haproxy.Output(), n.agent.Output())
		}
	}

	// Each pod's own plan, as an operator sees it.
	for _, c := range []struct {
		p        *ebpfPod
		proxyUID uint32
		excluded uint16
	}{{web, proxyUID, 8081}, {api, 5679, 8080}} {
		c.p.mustCNI("check")
		code, out, st := c.p.status()
		if code != 0 || st == nil || !st.Installed {
			t.Fatalf("%s/%s: shunt status exit %d, want 0 (installed):\n%s", c.p.namespace, c.p.name, code, out)
		}
		if st.Plan == nil || st.Plan.ProxyUID != c.proxyUID || fmt.Sprint(st.Plan.ExcludeOutboundPorts) != fmt.Sprint([]redirect.PortRange{{First: c.excluded, Last: c.excluded}}) {
			t.Errorf("%s/%s: status plan %+v, want proxy uid %d and port %d excluded", c.p.namespace, c.p.name, st.Plan, c.proxyUID, c.excluded)
		}
		if len(n.podRecords(c.p.cgroup)) == 0 {
			t.Errorf("%s/%s: the node has no record of the enrolled pod", c.p.namespace, c.p.name)
		}
	}

	// DEL: the pod leaves the node's programs; the other pod keeps them.
	web.mustCNI("del")
	if got := n.attached(web.cgroup); len(got) != 0 {
		t.Errorf("programs left attached to shop/web's cgroup after DEL: %v", got)
	}
	if left := n.podRecords(web.cgroup); len(left) != 0 {
		t.Errorf("shop/web still recorded or pinned by the node after DEL: %v", left)
	}
	if recs := globOf(t, filepath.Join(n.stateDir, "*")); len(recs) != 1 {
		t.Errorf("plugin records after one DEL: %v, want only shop/api's", recs)
	}
	if code, out, st := web.status(); code == 0 || (st != nil && st.Installed) {
		t.Errorf("shunt status reports shop/web installed after DEL (exit %d):\n%s", code, out)
	}
	if out, err := web.cnitool("check"); err == nil {
		t.Errorf("CHECK passed for a pod after its DEL:\n%s", out)
	}
	web.mustCNI("del")
	if got := n.attached(api.cgroup); fmt.Sprint(got) != fmt.Sprint(progs) {
		t.Errorf("shop/api's cgroup runs %v after shop/web left, want the node's %v", got, progs)
	}
	if !api.viaProxy(8081) {
		t.Errorf("shop/api not captured after shop/web left")
	}
	api.mustCNI("check")

	// A new agent (a rolling update) reuses the programs: the pod stays
	// enrolled in the same ones.
	n.agent.Stop()
	n.start("off")
	if got := n.programIDs(); fmt.Sprint(got) != fmt.Sprint(progs) {
		t.Errorf("a restarted agent loaded programs %v, want the pinned %v", got, progs)
	}
	if !api.viaProxy(8081) {
		t.Errorf("shop/api not captured after the agent restarted")
	}
	api.mustCNI("check")

	// The runtime may remove the pod's cgroup before its DEL: the pod
	// still leaves.
	api.haproxy.Stop()
	removeCgroup(t, api.cgroup)
	api.mustCNI("del")
	if left := n.podRecords(api.cgroup); len(left) != 0 {
		t.Errorf("shop/api still recorded or pinned by the node after DEL: %v", left)
	}
	if recs := globOf(t, filepath.Join(n.stateDir, "*")); len(recs) != 0 {
		t.Errorf("plugin records after every DEL: %v", recs)
	}
	api.mustCNI("del")
}

// removeCgroup removes a cgroup whose processes are exiting.
func removeCgroup(t *testing.T, cg string) {
	t.Helper()
	var err error
	for i := 0; i < 50; i++ {
		if err = os.Remove(cg); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("remove cgroup %s: %v", cg, err)
}

// A pod that ran before the agent chained the plugin is found through
// /proc and enrolled, at its pod cgroup (the parent of its container's),
// in the node's programs, with its annotations.
func TestEBPFNodeRepairsPodsStartedBefore(t *testing.T) {
	n := newEBPFNode(t)
	n.api.addNamespace("shop", nil)
	web := n.newPod("shop", "web")
	web.add() // by the primary CNI alone: shunt is not chained yet
	id := containerID(t)
	scope := filepath.Join(web.cgroup, "cri-containerd-"+id+".scope")
	if err := os.Mkdir(scope, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(t, scope) })
	container := web.ns.InCgroup(scope)
	container.Start(container.Command(context.Background(), "sleep", "600"))
	n.api.addPod("shop", "web", nodeName, "containerd://"+id, map[string]string{"shunt.dev/exclude-outbound-ports": "8081"})
	n.serveOnNode(8080)
	n.serveOnNode(8081)
	web.startProxy(proxyUID, 15001)
	if web.viaProxy(8080) {
		t.Fatal("traffic through the proxy before any capture")
	}

	n.start("install")
	// The node's record of the pod comes first (an enrolment records what
	// it is about to write), its links after: the programs are the node's
	// once it has recorded the pod.
	waitFor(t, 15*time.Second, "shop/web repaired", n.agent, func() bool {
		return len(n.podRecords(web.cgroup)) > 0 && fmt.Sprint(n.attached(web.cgroup)) == fmt.Sprint(n.programIDs())
	})
	progs := n.programIDs()
	if got := n.attached(web.cgroup); fmt.Sprint(got) != fmt.Sprint(progs) {
		t.Fatalf("repaired pod's cgroup runs programs %v, want the node's %v", got, progs)
	}
	if !web.viaProxy(8080) {
		t.Errorf("repaired shop/web: connection to port 8080 did not go through the proxy")
	}
	if web.viaProxy(8081) {
		t.Errorf("repaired shop/web: connection to port 8081, excluded by annotation, went through the proxy")
	}
	// The container's own cgroup is captured through its pod's.
	web.inPod = container
	if !web.viaProxy(8080) {
		t.Errorf("repaired shop/web: the container's connection did not go through the proxy")
	}
	time.Sleep(time.Second)
	if c := strings.Count(n.agent.Output(), "pod repaired"); c != 1 {
		t.Errorf("the agent repaired %d times, want once:\n%s", c, n.agent.Output())
	}
}

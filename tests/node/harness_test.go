package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	proxyUID  = 5678
	appUID    = 1000
	gatewayIP = "10.244.9.1"
	network   = "shuntnet"
	nodeName  = "node-1"
	refCNIDir = "/usr/lib/cni"
)

// world is one node: its network namespace (where the agent, cnitool, the
// bridge and the API server live), its CNI directories, and the agent's.
type world struct {
	t          *testing.T
	node       *testenv.Netns
	api        *apiServer
	kubeconfig string
	confDir    string
	binDir     string
	backupDir  string
	stateDir   string
	ipamDir    string
	pluginConf string
	// conflist is the primary CNI's file, original are its bytes.
	conflist string
	original []byte
}

func newWorld(t *testing.T) *world {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "iptables-nft-save")
	if _, err := os.Stat(filepath.Join(refCNIDir, "bridge")); err != nil {
		if testenv.InCI() {
			t.Fatalf("reference CNI plugins missing in %s; `make deps` installs containernetworking-plugins", refCNIDir)
		}
		t.Skipf("reference CNI plugins missing in %s: install containernetworking-plugins", refCNIDir)
	}
	w := &world{
		t:         t,
		confDir:   t.TempDir(),
		binDir:    t.TempDir(),
		backupDir: filepath.Join(t.TempDir(), "backup"),
		stateDir:  t.TempDir(),
		ipamDir:   t.TempDir(),
	}
	w.node = testenv.NewNetns(t, "node")
	w.api = newAPIServer(t, w.node)
	w.kubeconfig = w.api.kubeconfig(t.TempDir())
	// The primary CNI's file, formatted as no JSON encoder would, so that a
	// restore that re-encodes instead of copying shows.
	w.conflist = filepath.Join(w.confDir, "10-bridge.conflist")
	w.original = []byte(fmt.Sprintf(`{
    "cniVersion": "1.0.0",
    "name": %q,
    "plugins": [
        {
            "type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
            "ipam": {
                "type": "host-local", "subnet": "10.244.9.0/24", "dataDir": %q,
                "routes": [ { "dst": "0.0.0.0/0" } ]
            }
        }
    ]
}
`, network, testenv.UniqueName("shbr"), w.ipamDir))
	if err := os.WriteFile(w.conflist, w.original, 0o644); err != nil {
		t.Fatal(err)
	}
	w.writePluginConf(nil)
	return w
}

// writePluginConf writes the agent's --plugin-config; extra adds or
// replaces top-level keys.
func (w *world) writePluginConf(extra map[string]any) {
	w.t.Helper()
	conf := map[string]any{
		"stateDir":          w.stateDir,
		"excludeNamespaces": []any{"kube-system"},
		"capture":           map[string]any{"proxyUID": proxyUID, "outboundPort": 15001},
	}
	for k, v := range extra {
		conf[k] = v
	}
	b, err := json.Marshal(conf)
	if err != nil {
		w.t.Fatal(err)
	}
	w.pluginConf = filepath.Join(w.t.TempDir(), "cni.json")
	if err := os.WriteFile(w.pluginConf, b, 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// agentArgs are the flags of `shunt node` for this world.
func (w *world) agentArgs(extra ...string) []string {
	return append([]string{"node",
		"--kubeconfig", w.kubeconfig,
		"--node-name", nodeName,
		"--cni-bin-dir", w.binDir,
		"--cni-conf-dir", w.confDir,
		"--backup-dir", w.backupDir,
		"--plugin-config", w.pluginConf,
		"--interval", "200ms",
	}, extra...)
}

// startAgent runs `shunt node` in the node namespace, as the DaemonSet's
// hostNetwork pod runs in the node's.
func (w *world) startAgent(extra ...string) *testenv.Process {
	w.t.Helper()
	cmd := w.node.Command(context.Background(), bins.shunt, w.agentArgs(extra...)...)
	p := testenv.StartProcess(w.t, cmd)
	w.t.Cleanup(func() {
		if w.t.Failed() {
			w.t.Logf("agent output:\n%s", p.Output())
		}
	})
	return p
}

// waitChained waits until the agent has chained shunt into the conflist.
func (w *world) waitChained(agent *testenv.Process) map[string]any {
	w.t.Helper()
	var conf map[string]any
	waitFor(w.t, 10*time.Second, "the plugin chained into "+w.conflist, agent, func() bool {
		b, err := os.ReadFile(w.conflist)
		if err != nil || json.Unmarshal(b, &conf) != nil {
			return false
		}
		plugins, _ := conf["plugins"].([]any)
		last, _ := plugins[len(plugins)-1].(map[string]any)
		return last["type"] == "shunt-cni"
	})
	return conf
}

// waitFor polls cond until it holds, and fails the test with what the
// agent printed when it does not.
func waitFor(t *testing.T, d time.Duration, what string, agent *testenv.Process, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			out := ""
			if agent != nil {
				out = agent.Output()
			}
			t.Fatalf("timed out waiting for %s\nagent output:\n%s", what, out)
		}
		if agent != nil && agent.Exited() {
			t.Fatalf("agent exited while waiting for %s:\n%s", what, agent.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pod is one pod's network namespace, wired to the node's bridge by
// cnitool with the node's conflist as it is at the time.
type pod struct {
	w         *world
	ns        *testenv.Netns
	namespace string
	name      string
	haproxy   *testenv.Process
}

func (w *world) newPod(namespace, name string) *pod {
	w.t.Helper()
	return &pod{w: w, ns: testenv.NewNetns(w.t, "pod"), namespace: namespace, name: name}
}

// cniArgs are the CNI_ARGS kubelet passes.
func (p *pod) cniArgs() string {
	return fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=uid-%s-%s",
		p.namespace, p.name, p.ns.Name(), p.namespace, p.name)
}

// cnitool runs one command of the node's network for the pod, inside the
// node namespace, with the agent's bin dir on CNI_PATH.
func (p *pod) cnitool(command string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := p.w.node.Command(ctx, "env",
		"CNI_PATH="+refCNIDir+":"+p.w.binDir,
		"NETCONFPATH="+p.w.confDir,
		"CNI_ARGS="+p.cniArgs(),
		"CNI_IFNAME=eth0",
		bins.cnitool, command, network, p.ns.Path())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// add runs ADD and registers DEL for cleanup, so the veth and the IPAM
// lease go even when the test fails.
func (p *pod) add() string {
	p.w.t.Helper()
	p.w.t.Cleanup(func() { _, _ = p.cnitool("del") })
	out, err := p.cnitool("add")
	if err != nil {
		p.w.t.Fatalf("cnitool add %s/%s: %v\n%s", p.namespace, p.name, err, out)
	}
	return out
}

// rules returns shunt's lines in the pod's nft-backed rules.
func (p *pod) rules() string {
	p.w.t.Helper()
	return p.ns.ShuntRules()
}

// serveOnNode answers HTTP on the bridge's address in the node namespace.
func (w *world) serveOnNode(port int) {
	w.t.Helper()
	testenv.ServeHTTP(w.t, w.node, fmt.Sprintf("%s:%d", gatewayIP, port), fmt.Sprintf("node:%d", port))
}

// startProxy runs HAProxy in the pod as the proxy's user, forwarding what
// it accepts on the outbound port to the original destination.
func (p *pod) startProxy() {
	p.w.t.Helper()
	p.haproxy = testenv.StartHAProxy(p.w.t, p.ns, proxyUID, "127.0.0.1:15001")
}

// viaProxy GETs the node's port from the pod as the application's user,
// asserts the answer, and reports whether HAProxy carried the connection.
func (p *pod) viaProxy(port int) bool {
	t := p.w.t
	t.Helper()
	dst := fmt.Sprintf("%s:%d", gatewayIP, port)
	before := 0
	if p.haproxy != nil {
		before = strings.Count(p.haproxy.Output(), "-> "+dst)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := fmt.Sprintf("node:%d", port)
	out, err := p.ns.CommandAs(ctx, appUID, appUID, "curl", "-sS", "--max-time", "4", "http://"+dst+"/").CombinedOutput()
	if err != nil || string(out) != want {
		log := ""
		if p.haproxy != nil {
			log = p.haproxy.Output()
		}
		t.Fatalf("pod %s/%s GET %s = %q, %v; want %q\nproxy log:\n%s", p.namespace, p.name, dst, out, err, want, log)
	}
	if p.haproxy == nil {
		return false
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

// startWorkload starts a process in the pod's namespace inside a cgroup
// named after containerID, the way a runtime's container process looks in
// the host's /proc.
func (p *pod) startWorkload(containerID string) {
	t := p.w.t
	t.Helper()
	cg := testenv.NewCgroup(t)
	scope := filepath.Join(cg, "cri-containerd-"+containerID+".scope")
	if err := os.Mkdir(scope, 0o755); err != nil {
		t.Fatalf("create container cgroup: %v", err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			if err := os.Remove(scope); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s", scope)
	})
	proc := p.ns.Start(p.ns.Command(context.Background(), "sleep", "600"))
	if err := testenv.JoinCgroup(scope, proc.Cmd.Process.Pid); err != nil {
		t.Fatalf("move workload into its cgroup: %v", err)
	}
}

// Package cniscale measures what the CNI plugin adds to a pod's start, as a
// container runtime runs it: cnitool executes a chain of the reference
// bridge and host-local plugins, with or without shunt-cni after them,
// inside a "node" network namespace, for a fresh "pod" namespace.
//
//	SHUNT_BENCH=1 go test -run 'TestCNIShare|TestNodeScale' -v -timeout 15m ./bench/cniscale/
//
// TestCNIShare interleaves, round by round in a rotating order: the chain
// without shunt, with shunt's iptables engine, with shunt's eBPF engine
// enrolling the pod in node-wide programs loaded once (ebpf.NewNode, as the
// node agent does), the raw restore floor of the very rules the plugin
// installed, and the standalone eBPF install of one pod. shunt's share of
// ADD (and DEL) is the chain's time with it minus without it.
//
// TestNodeScale adds 200 pods one after another, and keeps them, per
// engine: ADD latency per pod index.
//
// SHUNT_BENCH_PLOTS=DIR writes the raw figures there and, where gnuplot is
// installed, PNG plots.
package cniscale

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	refCNIDir = "/usr/lib/cni"
	network   = "shuntbench"
	proxyUID  = 5678
)

func requireBench(t *testing.T) {
	t.Helper()
	if os.Getenv("SHUNT_BENCH") == "" {
		t.Skip("benchmark: set SHUNT_BENCH=1")
	}
	testenv.RequireRoot(t)
	for _, b := range []string{"ip", "unshare", "nsenter", "iptables-nft-save", "ip6tables-nft-save", "iptables-nft-restore", "ip6tables-nft-restore"} {
		testenv.RequireBinary(t, b)
	}
	if _, err := os.Stat(filepath.Join(refCNIDir, "bridge")); err != nil {
		t.Skipf("reference CNI plugins missing in %s: install containernetworking-plugins", refCNIDir)
	}
}

// bins are the lean build under the plugin's name (and as shunt, for the
// standalone install), and cnitool.
type bins struct {
	pluginDir, shunt, cnitool string
}

func build(t *testing.T) bins {
	t.Helper()
	dir := t.TempDir()
	b := bins{pluginDir: filepath.Join(dir, "plugins")}
	b.shunt = filepath.Join(dir, "shunt")
	if err := testenv.BuildShuntLean(b.shunt); err != nil {
		t.Fatal(err)
	}
	// The plugin is the same binary under its installed name (invoked so,
	// it is the plugin whatever its arguments).
	if err := os.MkdirAll(b.pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(b.shunt, filepath.Join(b.pluginDir, "shunt-cni")); err != nil {
		t.Fatal(err)
	}
	if w := os.Getenv("SHUNT_BENCH_WRAP"); w != "" {
		// To see where the time goes: the plugin runs under a command
		// (a shell word list, e.g. strace -f -tt -o /tmp/trace.$$), as
		// `shunt cni`, which is the plugin too.
		script := "#!/bin/sh\nexec " + w + " " + b.shunt + " cni\n"
		plugin := filepath.Join(b.pluginDir, "shunt-cni")
		if err := os.Remove(plugin); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(plugin, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tool, err := testenv.BuildCNITool(dir)
	if err != nil {
		t.Fatal(err)
	}
	b.cnitool = tool
	return b
}

// node is the node namespace, where cnitool and the bridge live, with one
// conflist directory per chain.
type node struct {
	t          *testing.T
	b          bins
	ns         *testenv.Netns
	ipamDir    string
	stateDir   string
	cgroupRoot string // cgroup-v2 mount, for the runtime's cgroupPath
	cgroupDir  string // this benchmark's subtree, parent of the pods'
	pinDir     string // on a private bpffs: the node-wide programs
	nodeState  string
	confs      map[string]string // chain name -> NETCONFPATH
}

func newNode(t *testing.T, b bins, subnet string) *node {
	t.Helper()
	n := &node{
		t:        t,
		b:        b,
		ns:       testenv.NewNetns(t, "cninode"),
		ipamDir:  t.TempDir(),
		stateDir: t.TempDir(),
		confs:    map[string]string{},
	}
	bridge := testenv.UniqueName("shbr")
	// The bridge is made by the first ADD, in the node namespace, and goes
	// with it; deleting it first is only tidier.
	t.Cleanup(func() { _, _ = n.ns.Run("ip", "link", "del", bridge) })
	base := map[string]any{
		"type":      "bridge",
		"bridge":    bridge,
		"isGateway": true,
		"ipMasq":    false,
		"ipam": map[string]any{
			"type":    "host-local",
			"subnet":  subnet,
			"dataDir": n.ipamDir,
			"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
		},
	}
	n.writeConf("bridge", base)
	n.writeConf("bridge+shunt iptables", base, map[string]any{
		"type": "shunt-cni", "stateDir": n.stateDir,
		"capture": map[string]any{"proxyUID": proxyUID, "outboundPort": 15001},
	})
	return n
}

// withEBPF loads the node-wide programs once and adds the chain whose
// shunt entry enrols each pod's cgroup in them. It reports why not when the
// kernel cannot.
func (n *node) withEBPF() error {
	n.t.Helper()
	mnt, err := testenv.Cgroup2Mount()
	if err != nil {
		return err
	}
	n.cgroupRoot = mnt
	n.cgroupDir = testenv.NewCgroup(n.t)
	bpffs := n.t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", bpffs, err)
	}
	// Registered before the pods' cleanups, so it runs after them.
	n.t.Cleanup(func() {
		if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
			n.t.Errorf("unmount bpffs %s: %v", bpffs, err)
		}
	})
	n.pinDir = filepath.Join(bpffs, "node")
	n.nodeState = n.t.TempDir()
	if err := loadNodePrograms(n.pinDir, n.nodeState, filepath.Join(n.cgroupDir, "probe")); err != nil {
		return err
	}
	n.writeConf("bridge+shunt ebpf (node)", n.baseEntry(), map[string]any{
		"type": "shunt-cni", "stateDir": n.stateDir,
		"capture":      map[string]any{"engine": "ebpf", "proxyUID": proxyUID, "outboundPort": 15001},
		"capabilities": map[string]any{"cgroupPath": true},
		"cgroupRoot":   n.cgroupRoot,
		"nodePinDir":   n.pinDir,
		"nodeStateDir": n.nodeState,
	})
	return nil
}

func (n *node) baseEntry() map[string]any {
	b, err := os.ReadFile(filepath.Join(n.confs["bridge"], "10.conflist"))
	if err != nil {
		n.t.Fatal(err)
	}
	var c struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		n.t.Fatal(err)
	}
	return c.Plugins[0]
}

func (n *node) writeConf(name string, plugins ...map[string]any) {
	n.t.Helper()
	conf := map[string]any{"cniVersion": "1.0.0", "name": network, "plugins": plugins}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		n.t.Fatal(err)
	}
	dir := n.t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "10.conflist"), b, 0o644); err != nil {
		n.t.Fatal(err)
	}
	n.confs[name] = dir
}

// pod is one pod's network namespace (and, for the eBPF engine, cgroup),
// removed right after its measurement and, whatever happens, when the
// test ends.
type pod struct {
	n      *node
	name   string
	cgroup string // absolute; "" without one
	chain  string // the chain it was added with, for DEL
	added  bool
	gone   bool
	// cpu is the user+system time of the last command run for the pod,
	// with every descendant it waited for (the plugins cnitool ran): less
	// sensitive to the machine's load than wall time.
	cpu time.Duration
}

func (n *node) newPod(withCgroup bool) *pod {
	n.t.Helper()
	p := &pod{n: n, name: testenv.UniqueName("shunt-cnipod-")}
	if out, err := exec.Command("ip", "netns", "add", p.name).CombinedOutput(); err != nil {
		n.t.Fatalf("ip netns add: %v: %s", err, out)
	}
	if withCgroup {
		p.cgroup = filepath.Join(n.cgroupDir, p.name)
		if err := os.Mkdir(p.cgroup, 0o755); err != nil {
			n.t.Fatalf("create pod cgroup: %v", err)
		}
	}
	n.t.Cleanup(p.remove)
	return p
}

func (p *pod) path() string { return filepath.Join("/run/netns", p.name) }

// remove runs DEL if ADD succeeded (the bridge's veth, the lease, shunt's
// state and the pod's links on the node's programs go), then deletes the
// namespace and the cgroup.
func (p *pod) remove() {
	if p.gone {
		return
	}
	p.gone = true
	if p.added {
		if _, out, err := p.cnitool("del", p.chain); err != nil {
			p.n.t.Errorf("cleanup DEL of %s: %v\n%s", p.name, err, out)
		}
	}
	_ = exec.Command("ip", "netns", "del", p.name).Run()
	if p.cgroup != "" {
		_ = os.Remove(p.cgroup)
	}
}

// cnitool runs one command of a chain for the pod as a runtime does: in
// the node's network namespace, the host's cgroups, with the cgroupPath
// capability. It runs in a mount namespace of its own with a throwaway
// bpffs on /sys/fs/bpf (the node's programs are on another, named by the
// conflist), so that nothing it does can pin on the machine's. Every chain
// pays the same wrapper, so that it cancels out of shunt's share. It
// returns the wall time of the whole command.
func (p *pod) cnitool(command, chain string) (time.Duration, string, error) {
	capArgs := "{}"
	if p.cgroup != "" {
		rel, err := filepath.Rel(p.n.cgroupRoot, p.cgroup)
		if err != nil {
			return 0, "", err
		}
		capArgs = fmt.Sprintf(`{"cgroupPath": %q}`, "/"+rel)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", `mount -t bpf bpf /sys/fs/bpf && exec "$@"`, "sh",
		"nsenter", "--net="+p.n.ns.Path(), "env",
		"CNI_PATH="+refCNIDir+":"+p.n.b.pluginDir,
		"NETCONFPATH="+p.n.confs[chain],
		"CNI_IFNAME=eth0",
		"CAP_ARGS="+capArgs,
		p.n.b.cnitool, command, network, p.path())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	p.cpu = cpuOf(cmd)
	return d, out.String(), err
}

// add runs ADD with the chain and returns its wall time.
func (p *pod) add(chain string) time.Duration {
	p.n.t.Helper()
	p.chain = chain
	d, out, err := p.cnitool("add", chain)
	if err != nil {
		// Whatever ADD left is for DEL to remove.
		p.added = true
		p.n.t.Fatalf("cnitool add (%s): %v\n%s", chain, err, out)
	}
	p.added = true
	return d
}

// del runs DEL and returns its wall time.
func (p *pod) del() time.Duration {
	p.n.t.Helper()
	d, out, err := p.cnitool("del", p.chain)
	if err != nil {
		p.n.t.Fatalf("cnitool del (%s): %v\n%s", p.chain, err, out)
	}
	p.added = false
	return d
}

// runHost runs argv in the test's network namespace, under the same
// mount-namespace wrapper, and returns its wall time.
func (p *pod) runHost(argv ...string) (time.Duration, string) {
	p.n.t.Helper()
	return p.exec("", append([]string{"unshare", "--mount", "--propagation", "private",
		"sh", "-c", `mount -t bpf bpf /sys/fs/bpf && exec "$@"`, "sh"}, argv...))
}

// run runs argv in the pod's namespace, as an init script would, and
// returns its wall time.
func (p *pod) run(stdin string, argv ...string) (time.Duration, string) {
	p.n.t.Helper()
	return p.exec(stdin, append([]string{"ip", "netns", "exec", p.name}, argv...))
}

func (p *pod) exec(stdin string, argv []string) (time.Duration, string) {
	p.n.t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	p.cpu = cpuOf(cmd)
	if err != nil {
		p.n.t.Fatalf("%v: %v\n%s", argv, err, out.String())
	}
	return d, out.String()
}

type series map[string][]time.Duration

func sorted(ds []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

func median(ds []time.Duration) time.Duration { return quantile(ds, 0.5) }

func quantile(ds []time.Duration, q float64) time.Duration {
	s := sorted(ds)
	if len(s) == 0 {
		return 0
	}
	return s[int(q*float64(len(s)-1)+0.5)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// dirBytes is the disk footprint of a directory tree: file sizes and count.
func dirBytes(dir string) (int64, int) {
	var size int64
	files := 0
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			size += fi.Size()
			files++
		}
		return nil
	})
	return size, files
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func cpuOf(cmd *exec.Cmd) time.Duration {
	if cmd.ProcessState == nil {
		return 0
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

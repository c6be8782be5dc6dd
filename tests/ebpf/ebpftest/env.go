// Package ebpftest builds the world shunt's eBPF capture tests and
// benchmarks run in: a "pod" network namespace with its own cgroup-v2
// subtree, a "remote" namespace joined to it by a veth pair, a private
// bpffs, and processes started inside the pod's cgroup and namespace at
// once. Helper programs (servers, clients, a DNS responder) are the test
// binary itself, re-executed; see Main.
package ebpftest

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/ebpf"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// ProxyUID is the user the proxy stand-ins run as.
const ProxyUID = 5678

// AppUID is the user test applications run as.
const AppUID = 1000

// Pod is one test's world.
type Pod struct {
	t        testing.TB
	NS       *testenv.Netns // the workload's namespace
	Remote   *testenv.Netns
	Host     testenv.Host // the pod's end of the link
	Peer     testenv.Host // the remote's end
	Cgroup   string
	PinDir   string
	StateDir string
	bin      string // a copy of the test binary every user can run
}

// NewPod creates the namespaces, the link, the cgroup, a private bpffs and
// a runnable copy of the test binary; all go away when the test ends.
func NewPod(t testing.TB) *Pod {
	t.Helper()
	return NewPodN(t, 1)
}

// NewPodN is NewPod with the pod's link addressed from 10.<n>.0.0/24 and
// fd00:<n>::/64, so that several pods of one test have addresses of their
// own, as pods on one node do.
func NewPodN(t testing.TB, n int) *Pod {
	t.Helper()
	testenv.RequireRoot(t)
	p := &Pod{t: t}
	p.NS = testenv.NewNetns(t, "pod")
	p.Remote = testenv.NewNetns(t, "rem")
	p.Host, p.Peer = testenv.Link(t, p.NS, p.Remote, n)
	p.Cgroup = testenv.NewCgroup(t)
	p.PinDir = filepath.Join(MountBPFFS(t), "shunt")
	p.StateDir = t.TempDir()
	p.bin = copyBinary(t)
	return p
}

// MountBPFFS mounts a private bpffs on a temporary directory, never on the
// machine's /sys/fs/bpf, and unmounts it when the test ends.
func MountBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}

func copyBinary(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "shunt-ebpftest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "helper")
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// Dir returns a fresh directory every user can read, for configuration
// files of programs that run unprivileged.
func Dir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "shunt-ebpftest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Engine returns an engine for the pod, pinned on the private bpffs.
func (p *Pod) Engine() *ebpf.Engine {
	p.t.Helper()
	e, err := ebpf.New(ebpf.Options{NetnsPath: p.NS.Path(), CgroupPath: p.Cgroup, StateDir: p.StateDir, PinDir: p.PinDir})
	if err != nil {
		p.t.Fatal(err)
	}
	return e
}

// Install installs the plan and uninstalls it when the test ends.
func (p *Pod) Install(plan *redirect.Plan) *ebpf.Engine {
	p.t.Helper()
	e := p.Engine()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Install(ctx, plan); err != nil {
		p.t.Fatalf("install: %v", err)
	}
	p.t.Cleanup(func() {
		if err := p.Engine().Uninstall(context.Background()); err != nil && err != redirect.ErrNotInstalled {
			p.t.Errorf("uninstall: %v", err)
		}
	})
	return e
}

// NewNode loads the node-wide programs on a private bpffs, and removes
// them, and every pod still enrolled, when the test ends.
func NewNode(t testing.TB) (*ebpf.Node, ebpf.NodeOptions) {
	t.Helper()
	testenv.RequireRoot(t)
	opts := ebpf.NodeOptions{PinDir: filepath.Join(MountBPFFS(t), "shunt", "node"), StateDir: t.TempDir()}
	n, err := ebpf.NewNode(opts)
	if err != nil {
		t.Fatalf("load the node's programs: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := ebpf.UninstallNode(context.Background(), opts); err != nil && err != redirect.ErrNotInstalled {
			t.Errorf("uninstall node: %v", err)
		}
	})
	return n, opts
}

// Enrol enrols the pod in the node with the plan.
func (p *Pod) Enrol(n *ebpf.Node, plan *redirect.Plan) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Enrol(ctx, p.Cgroup, p.NS.Path(), plan); err != nil {
		p.t.Fatalf("enrol: %v", err)
	}
}

// Plan returns the default plan: Kuma's ports and proxy user, DNS left
// alone, inbound captured.
func Plan() *redirect.Plan {
	return &redirect.Plan{
		ProxyUID:       ProxyUID,
		BypassMark:     redirect.DefaultBypassMark,
		InboundPort:    redirect.DefaultInboundPort,
		CaptureInbound: true,
		OutboundPort:   redirect.DefaultOutboundPort,
		DNSPort:        redirect.DefaultDNSPort,
		DNSMode:        redirect.DNSNone,
		IPFamily:       redirect.FamilyDual,
	}
}

// Helper returns the command line of a helper program (see Main).
func (p *Pod) Helper(args ...string) []string {
	return append([]string{p.bin, helperFlag}, args...)
}

// InPod returns a command that runs argv in the pod's cgroup and namespace
// as uid:gid. The shell joins the cgroup before anything else runs, so
// the program's first connection is already captured.
func (p *Pod) InPod(ctx context.Context, uid, gid int, argv ...string) *exec.Cmd {
	script := fmt.Sprintf(`echo $$ > %s/cgroup.procs && exec ip netns exec %s setpriv --reuid=%d --regid=%d --clear-groups "$@"`,
		p.Cgroup, p.NS.Name(), uid, gid)
	return exec.CommandContext(ctx, "sh", append([]string{"-c", script, "sh"}, argv...)...)
}

// StartInPod starts a long-running program in the pod; it is stopped when
// the test ends.
func (p *Pod) StartInPod(uid, gid int, argv ...string) *testenv.Process {
	p.t.Helper()
	return testenv.StartProcess(p.t, p.InPod(context.Background(), uid, gid, argv...))
}

// RunInPod runs a program in the pod to completion and returns its output.
func (p *Pod) RunInPod(uid, gid int, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := p.InPod(ctx, uid, gid, argv...).CombinedOutput()
	return string(out), err
}

// StartRemote starts a helper in the remote namespace.
func (p *Pod) StartRemote(args ...string) *testenv.Process {
	p.t.Helper()
	return p.StartRemoteOn("", args...)
}

// StartRemoteOn starts a helper in the remote namespace on the CPUs listed
// (taskset syntax; "" for any), so benchmarks keep client and servers apart.
func (p *Pod) StartRemoteOn(cpus string, args ...string) *testenv.Process {
	p.t.Helper()
	argv := Pinned(cpus, p.Helper(args...))
	return p.Remote.Start(p.Remote.Command(context.Background(), argv[0], argv[1:]...))
}

// Pinned prefixes argv with taskset when cpus is not empty.
func Pinned(cpus string, argv []string) []string {
	if cpus == "" {
		return argv
	}
	return append([]string{"taskset", "-c", cpus}, argv...)
}

// WaitOutput waits until a process printed want.
func WaitOutput(t testing.TB, proc *testenv.Process, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(proc.Output(), want) {
			return
		}
		if proc.Exited() {
			t.Fatalf("process exited before printing %q:\n%s", want, proc.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %q:\n%s", want, proc.Output())
}

// HAProxy starts the proxy stand-in in the pod, as the proxy user, in the
// pod's cgroup: a TCP listener on the outbound port that forwards to the
// original destination it reads with SO_ORIGINAL_DST (server 0.0.0.0:0),
// logging every connection to stdout.
func (p *Pod) HAProxy(port uint16) *testenv.Process {
	p.t.Helper()
	return p.HAProxyAs(ProxyUID, port)
}

// HAProxyAs is HAProxy run as uid (and gid uid).
func (p *Pod) HAProxyAs(uid int, port uint16) *testenv.Process {
	p.t.Helper()
	bin := testenv.RequireBinary(p.t, "haproxy")
	cfg := filepath.Join(Dir(p.t), "haproxy.cfg")
	conf := fmt.Sprintf(`global
  log stdout format raw local0
  maxconn 8000
defaults
  mode tcp
  log global
  option tcplog
  timeout connect 3s
  timeout client 60s
  timeout server 60s
frontend outbound
  bind 0.0.0.0:%d
  default_backend original
backend original
  server s 0.0.0.0:0
`, port)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		p.t.Fatal(err)
	}
	proc := p.StartInPod(uid, uid, bin, "-db", "-f", cfg)
	if !p.listening(port) {
		p.t.Fatalf("HAProxy does not listen on port %d:\n%s", port, proc.Output())
	}
	return proc
}

// WaitListening waits until something listens on the TCP port in the pod.
func (p *Pod) WaitListening(port uint16) {
	p.t.Helper()
	if !p.listening(port) {
		p.t.Fatalf("nothing listens on port %d in the pod", port)
	}
}

func (p *Pod) listening(port uint16) bool {
	hex := fmt.Sprintf(":%04X ", port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := p.NS.Run("cat", "/proc/net/tcp", "/proc/net/tcp6")
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) > 3 && strings.Contains(f[1]+" ", hex) && f[3] == "0A" {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// Addr joins an address and a port.
func Addr(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// Itoa is strconv.Itoa, for building argv.
func Itoa(n int) string { return strconv.Itoa(n) }

// HAProxyDirect starts HAProxy with, besides the capturing outbound
// listener, one listener per entry of direct that forwards to a fixed
// server: the proxy reached without capture, for comparisons.
func (p *Pod) HAProxyDirect(port uint16, direct map[uint16]string) *testenv.Process {
	p.t.Helper()
	return p.HAProxyDirectOn("", port, direct)
}

// HAProxyDirectOn is HAProxyDirect with HAProxy bound to the CPUs listed
// (taskset syntax; "" for any).
func (p *Pod) HAProxyDirectOn(cpus string, port uint16, direct map[uint16]string) *testenv.Process {
	p.t.Helper()
	bin := testenv.RequireBinary(p.t, "haproxy")
	cfg := filepath.Join(Dir(p.t), "haproxy.cfg")
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 8000
defaults
  mode tcp
  timeout connect 3s
  timeout client 60s
  timeout server 60s
frontend outbound
  bind 0.0.0.0:%d
  default_backend original
backend original
  server s 0.0.0.0:0
`, port)
	for lport, server := range direct {
		fmt.Fprintf(&b, "listen direct%d\n  bind 127.0.0.1:%d\n  server s %s\n", lport, lport, server)
	}
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		p.t.Fatal(err)
	}
	proc := p.StartInPod(ProxyUID, ProxyUID, Pinned(cpus, []string{bin, "-db", "-f", cfg})...)
	if !p.listening(port) {
		p.t.Fatalf("HAProxy does not listen on port %d:\n%s", port, proc.Output())
	}
	for lport := range direct {
		p.WaitListening(lport)
	}
	return proc
}

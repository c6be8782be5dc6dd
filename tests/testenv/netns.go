package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Netns is a named network namespace (visible to `ip netns`) that exists for
// the duration of one test.
type Netns struct {
	t    testing.TB
	name string
	// cgroup, when set, is the cgroup-v2 directory that commands started
	// through this view join before they run (see InCgroup).
	cgroup string
}

// NewNetns creates a namespace with its loopback up. It is deleted, with every
// process the test started in it, when the test ends.
func NewNetns(t testing.TB, prefix string) *Netns {
	t.Helper()
	RequireRoot(t)
	RequireBinary(t, "ip")
	n := &Netns{t: t, name: UniqueName("shunt-" + prefix + "-")}
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", n.name, err, out)
		}
		_ = os.RemoveAll(filepath.Join("/etc/netns", n.name))
	})
	n.MustRun("ip", "link", "set", "lo", "up")
	return n
}

// Name is the ip-netns name.
func (n *Netns) Name() string { return n.name }

// Path is the bind-mounted namespace file, for --netns.
func (n *Netns) Path() string { return filepath.Join("/run/netns", n.name) }

// WriteResolvConf lays a resolv.conf over /etc/resolv.conf for programs run
// with `ip netns exec` (the ip-netns convention), and returns its path.
func (n *Netns) WriteResolvConf(content string) string {
	n.t.Helper()
	dir := filepath.Join("/etc/netns", n.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		n.t.Fatal(err)
	}
	p := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
	return p
}

// InCgroup returns a view of the namespace whose commands also run in the
// cgroup-v2 directory dir, from their first instruction: the eBPF engine
// captures by cgroup, and a process moved in after it started could have
// connected already.
func (n *Netns) InCgroup(dir string) *Netns {
	c := *n
	c.cgroup = dir
	return &c
}

// Command returns a command that runs inside the namespace.
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return n.wrap(ctx, append([]string{"ip", "netns", "exec", n.name, name}, args...))
}

// CommandAs returns a command that runs inside the namespace as uid:gid, the
// way a proxy runs under its own user.
func (n *Netns) CommandAs(ctx context.Context, uid, gid int, name string, args ...string) *exec.Cmd {
	return n.wrap(ctx, append([]string{"ip", "netns", "exec", n.name, "setpriv",
		fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid), "--clear-groups", name}, args...))
}

func (n *Netns) wrap(ctx context.Context, argv []string) *exec.Cmd {
	if n.cgroup == "" {
		return exec.CommandContext(ctx, argv[0], argv[1:]...)
	}
	// The shell joins the cgroup, then becomes the command: same PID.
	script := `echo $$ > "$0/cgroup.procs" && exec "$@"`
	return exec.CommandContext(ctx, "sh", append([]string{"-c", script, n.cgroup}, argv...)...)
}

// Run runs a command in the namespace and returns its combined output.
func (n *Netns) Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// MustRun is Run that fails the test on error.
func (n *Netns) MustRun(name string, args ...string) string {
	n.t.Helper()
	out, err := n.Run(name, args...)
	if err != nil {
		n.t.Fatalf("in netns %s: %s %s: %v\n%s", n.name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Do runs f on an OS thread switched into the namespace. Programs that f
// starts with os/exec inherit the namespace.
func (n *Netns) Do(f func() error) error {
	return ns.WithNetNSPath(n.Path(), func(ns.NetNS) error { return f() })
}

// Start starts a long-running command (built by Command or CommandAs) and
// stops it, by its PID, when the test ends. Its output goes to a buffer that
// the returned Process exposes.
func (n *Netns) Start(cmd *exec.Cmd) *Process {
	n.t.Helper()
	return StartProcess(n.t, cmd)
}

// Process is a program a test started.
type Process struct {
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// StartProcess starts cmd and registers its termination on cleanup.
func StartProcess(t testing.TB, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{Cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.String(), err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.Stop() })
	return p
}

// Stop terminates the process (SIGTERM, then SIGKILL after 3 s) and waits.
func (p *Process) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Output is what the process printed so far.
func (p *Process) Output() string { return p.out.String() }

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

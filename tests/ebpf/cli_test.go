package ebpf_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// buildShunt builds the shunt binary for command-line tests.
func buildShunt(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shunt")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/shunt-dev/shunt/cmd/shunt").CombinedOutput(); err != nil {
		t.Fatalf("build shunt: %v\n%s", err, out)
	}
	return bin
}

func runShunt(bin string, args ...string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		return string(out) + err.Error(), -1
	}
	return string(out), 0
}

// TestCommandLineLifecycle drives the eBPF engine the way a user does: shunt
// install --engine ebpf from the host side, a captured connection, status,
// explain, uninstall.
func TestCommandLineLifecycle(t *testing.T) {
	bin := buildShunt(t)
	pod := ebpftest.NewPod(t)
	remote := pod.StartRemote("echo-server", ebpftest.Addr(pod.Peer.IPv4, 8080))
	ebpftest.WaitOutput(t, remote, "listening 10.1.0.2:8080")
	haproxy := pod.HAProxy(redirect.DefaultOutboundPort)

	where := []string{"--netns", pod.NS.Path(), "--cgroup", pod.Cgroup, "--bpf-pin-dir", pod.PinDir, "--state-dir", pod.StateDir}
	out, code := runShunt(bin, append([]string{"install", "--engine", "auto", "--no-inbound", "--no-dns"}, where...)...)
	if code != 0 {
		t.Fatalf("install --engine auto: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "chose ebpf") {
		t.Errorf("--engine auto did not say it chose ebpf:\n%s", out)
	}
	t.Cleanup(func() { runShunt(bin, append([]string{"uninstall"}, where...)...) })

	out, err := dial(t, pod, app, ebpftest.Addr(pod.Peer.IPv4, 8080), "via-cli")
	if err != nil {
		t.Fatalf("application's connection: %v\n%s", err, out)
	}
	waitLog(t, haproxy, "outbound original/s", 1)

	// The record lets status, explain and uninstall find the engine, the
	// cgroup and the pins without being told.
	state := []string{"--netns", pod.NS.Path(), "--state-dir", pod.StateDir}
	out, code = runShunt(bin, append([]string{"status"}, state...)...)
	if code != 0 || !strings.Contains(out, "engine:  ebpf") {
		t.Errorf("status: exit %d, want 0 naming the ebpf engine\n%s", code, out)
	}
	out, code = runShunt(bin, append([]string{"explain", "--dst", "10.1.0.2:8080"}, state...)...)
	if code != 0 || !strings.Contains(out, "redirected to port 15001") {
		t.Errorf("explain: exit %d\n%s", code, out)
	}
	out, code = runShunt(bin, append([]string{"uninstall"}, state...)...)
	if code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	if entries, _ := os.ReadDir(pod.PinDir); len(entries) > 0 {
		t.Errorf("uninstall left pins in %s: %v", pod.PinDir, entries)
	}
	if out, code = runShunt(bin, append([]string{"status"}, state...)...); code != 4 {
		t.Errorf("status after uninstall: exit %d, want 4\n%s", code, out)
	}
}

func TestCommandLineRefusals(t *testing.T) {
	bin := buildShunt(t)
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"install", "--engine", "ebpf", "--no-dns"}, "cgroup: required"},
		{[]string{"install", "--engine", "ebpf", "--cgroup", dir, "--no-dns"}, "not a cgroup-v2 directory"},
		{[]string{"install", "--engine", "ebpf", "--cgroup", dir, "--no-dns", "--exclude-interfaces", "eth1"}, "excludeInterfaces"},
	}
	for _, c := range cases {
		out, code := runShunt(bin, append(c.args, "--state-dir", dir)...)
		if code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("shunt %v: exit %d, want a failure mentioning %q\n%s", c.args, code, c.want, out)
		}
	}
}

// A pod enrolled in the node's shared programs (DaemonSet use) is found by
// status, explain and uninstall from its cgroup.
func TestCommandLineFindsPodsEnrolledInTheNode(t *testing.T) {
	bin := buildShunt(t)
	node, opts := ebpftest.NewNode(t)
	pod := ebpftest.NewPod(t)
	plan := ebpftest.Plan()
	plan.ExcludeOutboundPorts = []redirect.PortRange{{First: 2222, Last: 2222}}
	pod.Enrol(node, plan)

	where := []string{"--engine", "ebpf", "--cgroup", pod.Cgroup, "--netns", pod.NS.Path(), "--bpf-pin-dir", opts.PinDir, "--state-dir", opts.StateDir}
	out, code := runShunt(bin, append([]string{"status"}, where...)...)
	if code != 0 || !strings.Contains(out, "engine:  ebpf") || !strings.Contains(out, "backend: node") {
		t.Errorf("status of an enrolled pod: exit %d\n%s", code, out)
	}
	out, code = runShunt(bin, append([]string{"explain", "--dst", "10.1.0.2:2222"}, where...)...)
	if code != 0 || !strings.Contains(out, "excludeOutboundPorts") {
		t.Errorf("explain for an enrolled pod: exit %d\n%s", code, out)
	}
	if out, code = runShunt(bin, append([]string{"uninstall"}, where...)...); code != 0 {
		t.Fatalf("uninstall of an enrolled pod: exit %d\n%s", code, out)
	}
	if _, err := node.Status(context.Background(), pod.Cgroup); !errors.Is(err, redirect.ErrNotInstalled) {
		t.Errorf("the pod is still enrolled after uninstall: %v", err)
	}
}

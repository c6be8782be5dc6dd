package ebpf_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestLifecycle: a restarted agent (a new Engine on the same pins) updates
// capture in place without dropping connections, Status sees drift and
// Install repairs it, and Uninstall leaves nothing behind.
func TestLifecycle(t *testing.T) {
	bpftool := testenv.RequireBinary(t, "bpftool")
	pod := ebpftest.NewPod(t)
	remote := pod.StartRemote("echo-server", "10.1.0.2:8080", "10.1.0.2:2222")
	ebpftest.WaitOutput(t, remote, "listening 10.1.0.2:2222")
	haproxy := pod.HAProxy(redirect.DefaultOutboundPort)
	plan := ebpftest.Plan()
	plan.CaptureInbound = false
	ctx := context.Background()
	if err := pod.Engine().Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pod.Engine().Uninstall(context.Background()) })
	linkIDs := cgroupLinks(t, bpftool, pod.Cgroup)
	if len(linkIDs) != 12 {
		t.Fatalf("want 12 programs attached to the cgroup, got %v", linkIDs)
	}

	// A long-lived connection through the proxy, opened by a client in the
	// pod that echoes on demand.
	conn := newLongConn(t, pod, "10.1.0.2:8080")
	conn.roundTrip(t, "before")

	// The agent restarts with a changed plan: maps change, programs are
	// swapped in place.
	plan2 := plan.Clone()
	plan2.ExcludeOutboundPorts = []redirect.PortRange{{First: 2222, Last: 2222}}
	if err := pod.Engine().Install(ctx, plan2); err != nil {
		t.Fatal(err)
	}
	conn.roundTrip(t, "after update")
	if got := cgroupLinks(t, bpftool, pod.Cgroup); fmt.Sprint(got) != fmt.Sprint(linkIDs) {
		t.Fatalf("links were replaced, not updated: %v then %v", linkIDs, got)
	}
	before := strings.Count(haproxy.Output(), "original/s")
	if out, err := dial(t, pod, app, "10.1.0.2:2222", "excluded"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if after := strings.Count(haproxy.Output(), "original/s"); after != before {
		t.Fatal("the updated plan's excluded port went through the proxy")
	}

	// Drift: a detached program and a changed map entry.
	e := pod.Engine()
	if out, err := exec.Command(bpftool, "link", "detach", "id", linkIDs[0]).CombinedOutput(); err != nil {
		t.Fatalf("bpftool link detach: %v\n%s", err, out)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(pod.PinDir, "map_port_flags"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Put(uint32(2222), uint8(0)); err != nil {
		t.Fatal(err)
	}
	m.Close()
	st, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	drift := strings.Join(st.Drift, "\n")
	if !strings.Contains(drift, "is detached") || !strings.Contains(drift, "map port_flags: entry") {
		t.Fatalf("drift not reported:\n%s", drift)
	}
	// Install repairs it.
	if err := e.Install(ctx, plan2); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Status(ctx); err != nil || len(st.Drift) > 0 {
		t.Fatalf("after repair: %v %v", err, st.Drift)
	}

	// A plan the engine refuses changes nothing.
	bad := plan2.Clone()
	bad.ExcludeInterfaces = []string{"eth0"}
	if err := e.Install(ctx, bad); err == nil {
		t.Fatal("a plan with excludeInterfaces was accepted")
	}
	if st, err := e.Status(ctx); err != nil || len(st.Drift) > 0 || !st.Plan.Equal(plan2) {
		t.Fatalf("a refused install changed the installation: %v %v", err, st.Drift)
	}

	ids := cgroupLinks(t, bpftool, pod.Cgroup)
	if err := e.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if got := cgroupLinks(t, bpftool, pod.Cgroup); len(got) != 0 {
		t.Fatalf("still attached after uninstall: %v", got)
	}
	out, _ := exec.Command(bpftool, "link", "list").CombinedOutput()
	for _, id := range ids {
		if strings.Contains(string(out), "\n"+id+": ") || strings.HasPrefix(string(out), id+": ") {
			t.Fatalf("link %s still exists:\n%s", id, out)
		}
	}
	if _, err := os.Stat(pod.PinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin directory left behind: %v", err)
	}
	if err := e.Uninstall(ctx); !errors.Is(err, redirect.ErrNotInstalled) {
		t.Fatalf("second uninstall: %v", err)
	}
	if _, err := e.Status(ctx); !errors.Is(err, redirect.ErrNotInstalled) {
		t.Fatalf("status after uninstall: %v", err)
	}
}

// cgroupLinks lists the ids of bpf links attached to the cgroup.
func cgroupLinks(t *testing.T, bpftool, cg string) []string {
	t.Helper()
	out, err := exec.Command(bpftool, "cgroup", "show", cg).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool cgroup show: %v\n%s", err, out)
	}
	var ids []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] != "ID" {
			ids = append(ids, f[0]) // program ids; stable across link lookups of the same program
		}
	}
	if len(ids) == 0 {
		return nil
	}
	// Map program ids to link ids.
	lo, _ := exec.Command(bpftool, "link", "list").CombinedOutput()
	var links []string
	for _, l := range strings.Split(string(lo), "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && strings.HasSuffix(f[0], ":") && f[1] == "cgroup" {
			for i := range f {
				if f[i] == "prog" && i+1 < len(f) {
					for _, id := range ids {
						if f[i+1] == id {
							links = append(links, strings.TrimSuffix(f[0], ":"))
						}
					}
				}
			}
		}
	}
	return links
}

type longConn struct {
	in  *os.File
	out *bufio.Reader
}

// newLongConn starts a client in the pod that keeps one connection open and
// sends each line it reads from stdin.
func newLongConn(t *testing.T, pod *ebpftest.Pod, addr string) *longConn {
	t.Helper()
	cmd := pod.InPod(context.Background(), app, app, pod.Helper("dial-stdin", addr)...)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = pr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	t.Cleanup(func() { pw.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return &longConn{in: pw, out: bufio.NewReader(stdout)}
}

func (c *longConn) roundTrip(t *testing.T, msg string) {
	t.Helper()
	fmt.Fprintln(c.in, msg)
	line, err := c.out.ReadString('\n')
	if err != nil || !strings.Contains(line, "echo "+msg) {
		t.Fatalf("long-lived connection: %q %v", line, err)
	}
}

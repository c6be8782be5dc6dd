// Package ebpf_test runs shunt's eBPF capture against real connections: an
// application and a proxy stand-in in a pod's network namespace and cgroup,
// servers in a remote namespace.
package ebpf_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

func TestMain(m *testing.M) {
	ebpftest.Main()
	os.Exit(m.Run())
}

const app, proxy = ebpftest.AppUID, ebpftest.ProxyUID

func mustContain(t *testing.T, out, want string) {
	t.Helper()
	if !strings.Contains(out, want) {
		t.Fatalf("want %q in:\n%s", want, out)
	}
}

// dial runs a client in the pod as uid and returns its output.
func dial(t *testing.T, pod *ebpftest.Pod, uid int, addr, msg string) (string, error) {
	t.Helper()
	return pod.RunInPod(uid, uid, pod.Helper("dial", addr, msg)...)
}

func TestOutboundThroughHAProxy(t *testing.T) {
	pod := ebpftest.NewPod(t)
	remote := pod.StartRemote("echo-server", ebpftest.Addr(pod.Peer.IPv4, 8080), ebpftest.Addr(pod.Peer.IPv4, 9090))
	ebpftest.WaitOutput(t, remote, "listening 10.1.0.2:9090")
	haproxy := pod.HAProxy(redirect.DefaultOutboundPort)
	plan := ebpftest.Plan()
	plan.CaptureInbound = false // no inbound listener here: Status would report it
	e := pod.Install(plan)

	out, err := dial(t, pod, app, ebpftest.Addr(pod.Peer.IPv4, 8080), "first")
	if err != nil {
		t.Fatalf("application's connection: %v\n%s\nhaproxy:\n%s", err, out, haproxy.Output())
	}
	// The remote sees HAProxy's connection, from the pod's address, and the
	// application's first connection was already captured.
	mustContain(t, out, "echo first local=10.1.0.2:8080 remote=10.1.0.1:")
	waitLog(t, haproxy, "outbound original/s", 1)

	// The proxy's own connections are not looped back into it.
	out, err = dial(t, pod, proxy, ebpftest.Addr(pod.Peer.IPv4, 9090), "from-proxy")
	if err != nil {
		t.Fatalf("proxy's connection: %v\n%s", err, out)
	}
	mustContain(t, out, "echo from-proxy")
	if n := strings.Count(haproxy.Output(), "outbound original/s"); n != 1 {
		t.Fatalf("the proxy's own connection went through HAProxy (%d log lines):\n%s", n, haproxy.Output())
	}

	st, err := e.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Drift) > 0 {
		t.Fatalf("drift right after install: %v", st.Drift)
	}
	stats, err := e.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if stats["redirected outbound"] != 1 || stats["original destination answered"] != 1 {
		t.Fatalf("counters: %v", stats)
	}
}

func waitLog(t *testing.T, p interface{ Output() string }, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(p.Output(), want) >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("want %d× %q in the log:\n%s", n, want, p.Output())
}

func TestExclusions(t *testing.T) {
	pod := ebpftest.NewPod(t)
	// A second address on the remote, for the CIDR exclusion.
	pod.Remote.MustRun("ip", "addr", "add", "10.1.0.3/24", "dev", pod.Peer.Dev)
	remote := pod.StartRemote("echo-server", "10.1.0.2:8080", "10.1.0.2:2222", "10.1.0.3:8080", "10.1.0.2:7000")
	ebpftest.WaitOutput(t, remote, "listening 10.1.0.2:7000")
	haproxy := pod.HAProxy(redirect.DefaultOutboundPort)

	plan := ebpftest.Plan()
	plan.ExcludeOutboundPorts = []redirect.PortRange{{First: 2222, Last: 2222}}
	plan.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.0.3/32")}
	plan.ExcludeOutboundPortsForUIDs = []redirect.UIDPortExclusion{{Protocol: "tcp", Ports: []redirect.PortRange{{First: 7000, Last: 7000}}, UIDs: []redirect.IDRange{{First: 2000, Last: 2001}}}}
	gid := uint32(4242)
	plan.ProxyGID = &gid
	pod.Install(plan)

	cases := []struct {
		name     string
		uid, gid int
		addr     string
		captured bool
	}{
		{"captured", app, app, "10.1.0.2:8080", true},
		{"excluded port", app, app, "10.1.0.2:2222", false},
		{"excluded CIDR", app, app, "10.1.0.3:8080", false},
		{"uid with port exclusion", 2001, 2001, "10.1.0.2:7000", false},
		{"uid without port exclusion", 2001, 2001, "10.1.0.2:8080", true},
		{"other uid on excluded port", app, app, "10.1.0.2:7000", true},
		{"proxy gid", 3000, int(gid), "10.1.0.2:8080", false},
	}
	seen := 0
	for _, c := range cases {
		out, err := pod.RunInPod(c.uid, c.gid, pod.Helper("dial", c.addr, c.name)...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, out)
		}
		mustContain(t, out, "echo "+c.name)
		if c.captured {
			seen++
			waitLog(t, haproxy, "outbound original/s", seen)
		}
		time.Sleep(50 * time.Millisecond)
		if n := strings.Count(haproxy.Output(), "outbound original/s"); n != seen {
			t.Fatalf("%s: want %d connections through HAProxy, got %d:\n%s", c.name, seen, n, haproxy.Output())
		}
	}
}

package ebpf_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// The include-only lists narrow capture in the eBPF engine as in the
// iptables one, for a pod with programs of its own and for a pod enrolled
// in the node's.
func TestIncludeOnlyLists(t *testing.T) {
	for _, mode := range []string{"own programs", "node"} {
		t.Run(mode, func(t *testing.T) {
			pod := ebpftest.NewPod(t)
			pod.Remote.MustRun("ip", "addr", "add", "10.1.0.3/24", "dev", pod.Peer.Dev)
			remote := pod.StartRemote("echo-server", "10.1.0.2:8080", "10.1.0.2:8081", "10.1.0.2:8082", "10.1.0.3:8080")
			ebpftest.WaitOutput(t, remote, "listening 10.1.0.3:8080")
			haproxy := pod.HAProxy(redirect.DefaultOutboundPort)

			plan := ebpftest.Plan()
			plan.CaptureInbound = false
			plan.IncludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.0.2/32")}
			plan.IncludeOutboundPorts = []redirect.PortRange{{First: 8080, Last: 8081}}
			plan.ExcludeOutboundPorts = []redirect.PortRange{{First: 8081, Last: 8081}}
			if mode == "node" {
				node, _ := ebpftest.NewNode(t)
				pod.Enrol(node, plan)
			} else {
				pod.Install(plan)
			}

			seen := 0
			for _, c := range []struct {
				name     string
				addr     string
				captured bool
			}{
				{"included", "10.1.0.2:8080", true},
				{"included but excluded port", "10.1.0.2:8081", false},
				{"port not included", "10.1.0.2:8082", false},
				{"cidr not included", "10.1.0.3:8080", false},
			} {
				out, err := dial(t, pod, app, c.addr, strings.ReplaceAll(c.name, " ", "-"))
				if err != nil {
					t.Fatalf("%s: %v\n%s", c.name, err, out)
				}
				if c.captured {
					seen++
					waitLog(t, haproxy, "outbound original/s", seen)
				}
				time.Sleep(50 * time.Millisecond)
				if n := strings.Count(haproxy.Output(), "outbound original/s"); n != seen {
					t.Fatalf("%s: want %d connections through HAProxy, got %d:\n%s", c.name, seen, n, haproxy.Output())
				}
			}
		})
	}
}

func TestIncludeInboundPorts(t *testing.T) {
	pod := ebpftest.NewPod(t)
	plan := ebpftest.Plan()
	plan.IncludeInboundPorts = []redirect.PortRange{{First: 8080, Last: 8080}}
	e := pod.Install(plan)
	listener := pod.StartInPod(proxy, proxy, pod.Helper("echo-server", "0.0.0.0:15006", "[::]:15006")...)
	ebpftest.WaitOutput(t, listener, "listening [::]:15006")
	appSrv := pod.StartInPod(app, app, pod.Helper("echo-server", "0.0.0.0:9090", "0.0.0.0:8080")...)
	ebpftest.WaitOutput(t, appSrv, "listening 0.0.0.0:8080")
	// Go's MPTCP listener stays out of the SOCKMAP; tc ingress steers to it.
	if n, err := e.SyncListener(context.Background()); err != nil {
		t.Logf("listener not in the sk_lookup map: %v", err)
	} else if n != 2 {
		t.Fatalf("registered %d listeners, want 2", n)
	}
	fromRemote := func(addr string) string {
		t.Helper()
		argv := pod.Helper("dial", addr, "in")
		out, err := pod.Remote.Run(argv[0], argv[1:]...)
		if err != nil {
			t.Fatalf("dial %s: %v\n%s", addr, err, out)
		}
		return out
	}
	steered := func() uint64 {
		s, err := e.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return s["inbound steered"]
	}
	mustContain(t, fromRemote("10.1.0.1:8080"), "local=10.1.0.1:8080 remote=10.1.0.2:")
	if n := steered(); n != 1 {
		t.Fatalf("steered %d connections to the included port, want 1", n)
	}
	mustContain(t, fromRemote("10.1.0.1:9090"), "local=10.1.0.1:9090")
	if n := steered(); n != 1 {
		t.Fatalf("a port not included was steered (%d)", n)
	}
}

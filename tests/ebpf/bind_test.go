package ebpf_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// TestCapturedPortsAreTheProxys: a process of the workload under another
// UID cannot bind the ports capture sends traffic to, nor the agent's
// admin port (it would answer in the proxy's, the DNS interceptor's or the
// agent's place while they are down); root and the proxy's UID can, and
// other ports stay free for everyone.
func TestCapturedPortsAreTheProxys(t *testing.T) {
	pod := ebpftest.NewPod(t)
	plan := ebpftest.Plan()
	plan.DNSMode = redirect.DNSAll
	plan.AdminPort = redirect.DefaultAdminPort
	pod.Install(plan)

	for _, c := range []struct {
		what string
		argv []string
	}{
		{"outbound port", pod.Helper("echo-server", "127.0.0.1:15001")},
		{"inbound port", pod.Helper("echo-server", "0.0.0.0:15006")},
		{"inbound port, IPv6", pod.Helper("echo-server", "[::]:15006")},
		{"DNS port", pod.Helper("dns-server", "127.0.0.1:15053")},
		{"admin port", pod.Helper("echo-server", "127.0.0.1:15090")},
		{"admin port, IPv6", pod.Helper("echo-server", "[::]:15090")},
	} {
		out, err := pod.RunInPod(app, app, c.argv...)
		if err == nil || !strings.Contains(out, "operation not permitted") {
			t.Errorf("%s: uid %d could bind it: %v\n%s", c.what, app, err, out)
		}
	}

	free := pod.StartInPod(app, app, pod.Helper("echo-server", "127.0.0.1:18080")...)
	ebpftest.WaitOutput(t, free, "listening 127.0.0.1:18080")
	own := pod.StartInPod(proxy, proxy, pod.Helper("echo-server", ebpftest.Addr(netip.MustParseAddr("127.0.0.1"), int(redirect.DefaultOutboundPort)))...)
	ebpftest.WaitOutput(t, own, "listening 127.0.0.1:15001")
	agent := pod.StartInPod(0, 0, pod.Helper("echo-server", "127.0.0.1:15090")...)
	ebpftest.WaitOutput(t, agent, "listening 127.0.0.1:15090")
	ownAdmin := pod.StartInPod(proxy, proxy, pod.Helper("echo-server", "[::1]:15090")...)
	ebpftest.WaitOutput(t, ownAdmin, "listening [::1]:15090")

	// With adminPort 0 the admin endpoint's usual port is everyone's, as
	// with the netfilter engines.
	t.Run("adminPort 0", func(t *testing.T) {
		pod := ebpftest.NewPod(t)
		plan := ebpftest.Plan()
		plan.AdminPort = 0
		pod.Install(plan)
		free := pod.StartInPod(app, app, pod.Helper("echo-server", "127.0.0.1:15090")...)
		ebpftest.WaitOutput(t, free, "listening 127.0.0.1:15090")
	})

	// A node's programs share the bind hooks; the pod's plan is in the
	// pods map.
	t.Run("node", func(t *testing.T) {
		node, _ := ebpftest.NewNode(t)
		pod := ebpftest.NewPod(t)
		plan := ebpftest.Plan()
		plan.AdminPort = redirect.DefaultAdminPort
		pod.Enrol(node, plan)
		out, err := pod.RunInPod(app, app, pod.Helper("echo-server", "127.0.0.1:15090")...)
		if err == nil || !strings.Contains(out, "operation not permitted") {
			t.Errorf("admin port: uid %d could bind it: %v\n%s", app, err, out)
		}
		own := pod.StartInPod(proxy, proxy, pod.Helper("echo-server", "127.0.0.1:15090")...)
		ebpftest.WaitOutput(t, own, "listening 127.0.0.1:15090")
	})
}

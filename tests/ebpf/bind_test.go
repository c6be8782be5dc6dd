package ebpf_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// TestCapturedPortsAreTheProxys: a process of the workload under another
// UID cannot bind the ports capture sends traffic to (it would answer in
// the proxy's or the DNS interceptor's place while they are down); the
// proxy's UID can, and other ports stay free for everyone.
func TestCapturedPortsAreTheProxys(t *testing.T) {
	pod := ebpftest.NewPod(t)
	plan := ebpftest.Plan()
	plan.DNSMode = redirect.DNSAll
	pod.Install(plan)

	for _, c := range []struct {
		what string
		argv []string
	}{
		{"outbound port", pod.Helper("echo-server", "127.0.0.1:15001")},
		{"inbound port", pod.Helper("echo-server", "0.0.0.0:15006")},
		{"inbound port, IPv6", pod.Helper("echo-server", "[::]:15006")},
		{"DNS port", pod.Helper("dns-server", "127.0.0.1:15053")},
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
}

package ebpf_test

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// startInterceptor runs the DNS interceptor stand-in on the pod's loopback.
func startInterceptor(t *testing.T, pod *ebpftest.Pod) {
	argv := pod.Helper("dns-server", "127.0.0.1:15053", "[::1]:15053")
	p := pod.NS.Start(pod.NS.Command(context.Background(), argv[0], argv[1:]...))
	ebpftest.WaitOutput(t, p, "listening [::1]:15053")
}

// dnsPlan captures DNS to two resolvers of each family, and no inbound.
func dnsPlan() *redirect.Plan {
	plan := ebpftest.Plan()
	plan.CaptureInbound = false
	plan.DNSMode = redirect.DNSResolvers
	plan.ResolvConf = "/etc/resolv.conf"
	plan.DNSServers = []netip.Addr{
		netip.MustParseAddr("10.1.0.53"), netip.MustParseAddr("10.1.0.54"),
		netip.MustParseAddr("fd00:1::53"), netip.MustParseAddr("fd00:1::54"),
	}
	return plan
}

func TestDNS(t *testing.T) {
	pod := ebpftest.NewPod(t)
	startInterceptor(t, pod)
	pod.Install(dnsPlan())

	for _, c := range []struct{ name, a, b string }{
		{"ipv4", "10.1.0.53:53", "10.1.0.54:53"},
		{"ipv6", "[fd00:1::53]:53", "[fd00:1::54]:53"},
	} {
		t.Run("udp "+c.name, func(t *testing.T) {
			out, err := pod.RunInPod(app, app, pod.Helper("dns-udp", "example.com", c.a, c.b)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			// One socket, two resolvers: each reply carries its resolver's
			// address, asked one at a time and both at once.
			for _, want := range []string{
				"reply id=100 from=" + c.a + " answer=192.0.2.53",
				"reply id=101 from=" + c.b + " answer=192.0.2.53",
				"reply id=200 from=" + c.a,
				"reply id=201 from=" + c.b,
			} {
				mustContain(t, out, want)
			}
		})
		t.Run("tcp "+c.name, func(t *testing.T) {
			out, err := pod.RunInPod(app, app, pod.Helper("dns-tcp", "example.com", c.a)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			mustContain(t, out, "OK answer=192.0.2.53")
		})
	}
	t.Run("glibc resolver", func(t *testing.T) {
		if _, err := exec.LookPath("getent"); err != nil {
			t.Skip("getent not installed")
		}
		pod.NS.WriteResolvConf("nameserver 10.1.0.53\nnameserver 10.1.0.54\n")
		out, err := pod.RunInPod(app, app, "getent", "ahostsv4", "shunt-test.example")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		mustContain(t, out, "192.0.2.53")
	})
}

func TestIPv6ThroughProxy(t *testing.T) {
	pod := ebpftest.NewPod(t)
	remote := pod.StartRemote("echo-server", "[fd00:1::2]:8080")
	ebpftest.WaitOutput(t, remote, "listening")
	proxyProc := pod.StartInPod(proxy, proxy, pod.Helper("origdst-proxy", "[::]:15001")...)
	ebpftest.WaitOutput(t, proxyProc, "listening")
	plan := ebpftest.Plan()
	plan.CaptureInbound = false
	pod.Install(plan)

	out, err := dial(t, pod, app, "[fd00:1::2]:8080", "six")
	if err != nil {
		t.Fatalf("%v\n%s\nproxy:\n%s", err, out, proxyProc.Output())
	}
	mustContain(t, out, "echo six local=[fd00:1::2]:8080 remote=[fd00:1::1]:")
	mustContain(t, proxyProc.Output(), "-> [fd00:1::2]:8080")
}

func TestEgressLockdown(t *testing.T) {
	pod := ebpftest.NewPod(t)
	pod.Remote.MustRun("ip", "addr", "add", "10.1.0.3/24", "dev", pod.Peer.Dev)
	remote := pod.StartRemote("echo-server", "10.1.0.2:8080", "10.1.0.3:8080", "10.1.0.3:2222")
	ebpftest.WaitOutput(t, remote, "listening 10.1.0.3:2222")
	haproxy := pod.HAProxy(redirect.DefaultOutboundPort)
	plan := ebpftest.Plan()
	plan.CaptureInbound = false
	plan.ExcludeOutboundPorts = []redirect.PortRange{{First: 2222, Last: 2222}}
	plan.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("10.1.0.2/32")}}
	pod.Install(plan)

	out, err := dial(t, pod, app, "10.1.0.2:8080", "allowed")
	if err != nil {
		t.Fatalf("allowed destination: %v\n%s\n%s", err, out, haproxy.Output())
	}
	mustContain(t, out, "echo allowed")

	fails := func(name string, uid int, addr, want string) {
		t.Helper()
		start := time.Now()
		out, err := dial(t, pod, uid, addr, name)
		if err == nil {
			t.Fatalf("%s: connection to %s succeeded:\n%s", name, addr, out)
		}
		mustContain(t, out, want)
		// Immediate: a refused connection, not a timeout (the client
		// waits 5 s).
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("%s: failing took %s:\n%s", name, d, out)
		}
	}
	// Passed by capture (excluded port), refused by lockdown at connect.
	fails("excluded port", app, "10.1.0.3:2222", "operation not permitted")
	// The proxy itself cannot reach a destination outside the allowed set.
	fails("proxy", proxy, "10.1.0.3:8080", "operation not permitted")
	// The application's connection is captured; the proxy's onward
	// connection is refused, so the application's ends at once.
	fails("captured", app, "10.1.0.3:8080", "ERR")

	out, err = pod.RunInPod(app, app, pod.Helper("udp-send", "10.1.0.3:9999")...)
	if err == nil || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("UDP to a non-allowed address: %v\n%s", err, out)
	}
}

// An endpoint of the proxy opens its own port, not its host.
func TestEgressLockdownEndpoints(t *testing.T) {
	pod := ebpftest.NewPod(t)
	pod.Remote.MustRun("ip", "addr", "add", "10.1.0.3/24", "dev", pod.Peer.Dev)
	remote := pod.StartRemote("echo-server", "10.1.0.3:8080", "10.1.0.3:2222")
	ebpftest.WaitOutput(t, remote, "listening 10.1.0.3:2222")
	haproxy := pod.HAProxy(redirect.DefaultOutboundPort)
	plan := ebpftest.Plan()
	plan.CaptureInbound = false
	plan.ExcludeOutboundPorts = []redirect.PortRange{{First: 2222, Last: 2222}}
	plan.Egress = &redirect.Egress{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.1.0.3:8080")}}
	pod.Install(plan)

	for _, uid := range []int{proxy, app} {
		out, err := dial(t, pod, uid, "10.1.0.3:8080", "endpoint")
		if err != nil {
			t.Fatalf("uid %d to the allowed endpoint: %v\n%s\n%s", uid, err, out, haproxy.Output())
		}
		mustContain(t, out, "echo endpoint")
	}
	for _, uid := range []int{proxy, app} {
		start := time.Now()
		out, err := dial(t, pod, uid, "10.1.0.3:2222", "other-port")
		if err == nil {
			t.Fatalf("uid %d reached another port of an endpoint's address:\n%s", uid, out)
		}
		mustContain(t, out, "operation not permitted")
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("uid %d: failing took %s:\n%s", uid, d, out)
		}
	}
	// Endpoints are TCP: UDP to the same address and port stays refused.
	out, err := pod.RunInPod(app, app, pod.Helper("udp-send", "10.1.0.3:8080")...)
	if err == nil || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("UDP to a TCP endpoint: %v\n%s", err, out)
	}
}

// Lockdown acts at connect and sendmsg: IPv6 neighbour discovery, which
// the kernel sends without a socket of the workload's, is not in its way.
// Neither side has a neighbour entry when each connection starts.
func TestEgressLockdownIPv6Neighbours(t *testing.T) {
	pod := ebpftest.NewPod(t)
	remote := pod.StartRemote("echo-server", "[fd00:1::2]:8080", "[fd00:1::2]:2222")
	ebpftest.WaitOutput(t, remote, "listening [fd00:1::2]:2222")
	plan := ebpftest.Plan()
	plan.CaptureInbound = false
	plan.Egress = &redirect.Egress{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[fd00:1::2]:8080")}}
	pod.Install(plan)
	flush := func() {
		pod.NS.MustRun("ip", "-6", "neigh", "flush", "dev", pod.Host.Dev)
		pod.Remote.MustRun("ip", "-6", "neigh", "flush", "dev", pod.Peer.Dev)
	}

	flush()
	out, err := dial(t, pod, proxy, "[fd00:1::2]:8080", "endpoint")
	if err != nil {
		t.Fatalf("the proxy to the allowed endpoint over IPv6: %v\n%s\nneighbours: %s", err, out,
			pod.NS.MustRun("ip", "-6", "neigh", "show", "dev", pod.Host.Dev))
	}
	mustContain(t, out, "echo endpoint")

	flush()
	start := time.Now()
	out, err = dial(t, pod, proxy, "[fd00:1::2]:2222", "other-port")
	if err == nil {
		t.Fatalf("the proxy reached another port of the endpoint's address:\n%s", out)
	}
	mustContain(t, out, "operation not permitted")
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("failing took %s:\n%s", d, out)
	}
}

func TestInbound(t *testing.T) {
	pod := ebpftest.NewPod(t)
	pod.Remote.MustRun("ip", "addr", "add", "10.1.0.3/24", "dev", pod.Peer.Dev)
	plan := ebpftest.Plan()
	plan.ExcludeInboundPorts = []redirect.PortRange{{First: 2222, Last: 2222}}
	plan.ExcludeInboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.0.3/32")}
	e := pod.Install(plan)

	// The proxy's inbound listener starts after capture is installed, as in
	// a pod whose init container installs it; the agent registers it.
	listener := pod.StartInPod(proxy, proxy, pod.Helper("echo-server", "0.0.0.0:15006", "[::]:15006")...)
	ebpftest.WaitOutput(t, listener, "listening [::]:15006")
	appSrv := pod.StartInPod(app, app, pod.Helper("echo-server", "0.0.0.0:2222", "0.0.0.0:8080")...)
	ebpftest.WaitOutput(t, appSrv, "listening 0.0.0.0:8080")
	// The helper listens as Go does by default: with MPTCP where the
	// kernel has it. Such a socket cannot go in sk_lookup's SOCKMAP; the
	// tc ingress program steers to it all the same.
	if n, err := e.SyncListener(context.Background()); err != nil {
		t.Logf("listener not in the sk_lookup map (%d registered): %v", n, err)
	} else if n != 2 {
		t.Fatalf("registered %d listeners, want 2", n)
	}
	st, err := e.Status(context.Background())
	if err != nil || len(st.Drift) > 0 {
		t.Fatalf("status: %v %v", err, st.Drift)
	}

	fromRemote := func(addr string, src ...string) string {
		t.Helper()
		argv := pod.Helper(append([]string{"dial", addr, "in"}, src...)...)
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
	// Steered to 15006, which sees the original destination as its own
	// address.
	mustContain(t, fromRemote("10.1.0.1:8080"), "local=10.1.0.1:8080 remote=10.1.0.2:")
	mustContain(t, fromRemote("[fd00:1::1]:8080"), "local=[fd00:1::1]:8080 remote=[fd00:1::2]:")
	if n := steered(); n != 2 {
		t.Fatalf("steered %d connections, want 2", n)
	}
	// Excluded port and excluded source reach the application directly.
	mustContain(t, fromRemote("10.1.0.1:2222"), "local=10.1.0.1:2222")
	mustContain(t, fromRemote("10.1.0.1:8080", "10.1.0.3"), "local=10.1.0.1:8080 remote=10.1.0.3:")
	if n := steered(); n != 2 {
		t.Fatalf("excluded connections were steered (%d)", n)
	}
	// The workload talking to its own address is loopback traffic.
	out, err := dial(t, pod, app, "10.1.0.1:8080", "self")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if n := steered(); n != 2 {
		t.Fatalf("the workload's connection to itself was steered (%d)", n)
	}
	// The proxy connecting to the workload's own address goes to the
	// inbound listener (Plan.Explain), with the original destination.
	out, err = dial(t, pod, proxy, "10.1.0.1:8080", "proxy-self")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	mustContain(t, out, "local=127.0.0.1:15006")
}

// Before the proxy listens, inbound connections are refused at once, as a
// REDIRECT to a closed port refuses them: they never reach the application
// behind the proxy's back. Status says why without calling it drift.
func TestInboundBeforeTheProxyListensIsRefused(t *testing.T) {
	pod := ebpftest.NewPod(t)
	e := pod.Install(ebpftest.Plan())
	appSrv := pod.StartInPod(app, app, pod.Helper("echo-server", "0.0.0.0:8080")...)
	ebpftest.WaitOutput(t, appSrv, "listening 0.0.0.0:8080")

	st, err := e.Status(context.Background())
	if err != nil || len(st.Drift) > 0 || !strings.Contains(strings.Join(st.Notes, "\n"), "inbound listener") {
		t.Fatalf("status without a listener: err %v, drift %v, notes %v", err, st.Drift, st.Notes)
	}
	argv := pod.Helper("dial", "10.1.0.1:8080", "in")
	start := time.Now()
	out, err := pod.Remote.Run(argv[0], argv[1:]...)
	if err == nil || strings.Contains(out, "echo in") {
		t.Fatalf("inbound connection without a proxy listener reached the application: %v\n%s", err, out)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("refusal took %v, want it immediate (a reset, not a timeout)", took)
	}
	if !strings.Contains(out, "refused") {
		t.Errorf("want connection refused, got:\n%s", out)
	}
}

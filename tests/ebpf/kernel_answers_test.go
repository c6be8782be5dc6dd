package ebpf_test

import (
	"net/netip"
	"testing"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/dnsproxy/kernelanswers"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// TestKernelAnswersBehindTheEBPFEngine: with the eBPF engine sending the
// application's DNS to the interceptor's port, the kernel answerer on the
// pod's lo answers table names (the interceptor stand-in answers
// 192.0.2.53 for everything, the table 240.0.0.7), and the engine gives
// each answer its resolver's address back, as it does the interceptor's:
// one unconnected socket asking two resolvers, of each family, gets each
// reply from the resolver it asked.
func TestKernelAnswersBehindTheEBPFEngine(t *testing.T) {
	pod := ebpftest.NewPod(t)
	startInterceptor(t, pod)
	pod.Install(dnsPlan())

	a, err := kernelanswers.Load([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:15053"), netip.MustParseAddrPort("[::1]:15053")})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tb, err := dnsproxy.NewTable(map[string][]netip.Addr{"shunt-kernel.mesh": {netip.MustParseAddr("240.0.0.7")}}, dnsproxy.TableOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Sync(tb); err != nil {
		t.Fatal(err)
	}
	detach, err := kernelanswers.Attach(pod.NS.Path(), a.Program())
	if err != nil {
		t.Fatal(err)
	}
	defer detach()

	for _, c := range []struct{ name, a, b string }{
		{"ipv4", "10.1.0.53:53", "10.1.0.54:53"},
		{"ipv6", "[fd00:1::53]:53", "[fd00:1::54]:53"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := pod.RunInPod(app, app, pod.Helper("dns-udp", "shunt-kernel.mesh", c.a, c.b)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, want := range []string{
				"reply id=100 from=" + c.a + " answer=240.0.0.7",
				"reply id=101 from=" + c.b + " answer=240.0.0.7",
				"reply id=200 from=" + c.a + " answer=240.0.0.7",
				"reply id=201 from=" + c.b + " answer=240.0.0.7",
			} {
				mustContain(t, out, want)
			}
			// A name the table lacks is the interceptor's.
			out, err = pod.RunInPod(app, app, pod.Helper("dns-udp", "example.com", c.a)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			mustContain(t, out, "reply id=100 from="+c.a+" answer=192.0.2.53")
		})
	}
	st, err := a.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Answered != 8 || st.Tracked != 0 {
		t.Errorf("kernel answered %d (want 8), %d seen by conntrack (want 0): %+v", st.Answered, st.Tracked, st)
	}
}

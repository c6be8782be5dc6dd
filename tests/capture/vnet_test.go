package capture_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// A VM or container nested in the workload (KubeVirt, Docker-in-pod) sends
// its traffic through the pod; with its interface in vnetInterfaces that
// traffic is captured as the workload's outbound traffic, except inside
// the nested network itself.
func TestVNetTrafficIsCapturedAsOutbound(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			vm := testenv.NewNetns(t, "vm")
			podEnd, vmEnd := testenv.Link(t, w.pod, vm, 3)
			testenv.AddDefaultRoute(t, vmEnd, podEnd)
			w.serveHTTP(8080)
			serveApp(t, w, 8080)
			// REDIRECT in PREROUTING sends to the address of the interface
			// the packet came in on: the proxy listens there, as Envoy
			// listening on every address does.
			v4 := testenv.StartHAProxy(t, w.pod, proxyUID, podEnd.IPv4.String()+":15001")
			v6 := w.pod.Start(w.pod.CommandAs(context.Background(), proxyUID, proxyUID, bins.standin, "-listen", "["+podEnd.IPv6.String()+"]:15001"))
			testenv.WaitListening(t, w.pod, v6.Output, "["+podEnd.IPv6.String()+"]:15001")
			logs := func() string { return v4.Output() + v6.Output() }

			w.install("--vnet-interfaces", podEnd.Dev+":10.3.0.0/24,"+podEnd.Dev+":fd00:3::/64")

			cases := []struct {
				name, url, body, dst string
				proxied              bool
			}{
				{"vm to remote", "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080", true},
				{"vm to remote v6", "http://[fd00:1::2]:8080/", "remote:8080", "[fd00:1::2]:8080", true},
				{"vm to its own network", "http://10.3.0.1:8080/", "app:8080", "10.3.0.1:8080", false},
				{"vm to its own network v6", "http://[fd00:3::1]:8080/", "app:8080", "[fd00:3::1]:8080", false},
			}
			// The nested workload's DNS to the pod's nameservers goes to the
			// interceptor (a stand-in here, listening where REDIRECT sends),
			// and its reply comes back from the nameserver's address.
			serveDNS(t, w.pod, podEnd.IPv4.String()+":15053", "192.0.2.77")
			for _, proto := range []string{"+notcp", "+tcp"} {
				out, err := vm.Run("dig", "+short", "+tries=1", "+time=2", proto, "@10.1.0.2", "vm.example.")
				if err != nil || strings.TrimSpace(out) != "192.0.2.77" {
					t.Errorf("vm dig %s @10.1.0.2 = %q, %v; want the interceptor's answer 192.0.2.77", proto, out, err)
				}
			}

			for _, c := range cases {
				before := strings.Count(logs(), "-> "+c.dst)
				got, err := curlFrom(vm, c.url)
				if err != nil || got != c.body {
					t.Errorf("%s: vm GET %s = %q, %v; want %q\nproxy log:\n%s", c.name, c.url, got, err, c.body, logs())
					continue
				}
				proxied := false
				for deadline := time.Now().Add(400 * time.Millisecond); time.Now().Before(deadline) && !proxied; time.Sleep(20 * time.Millisecond) {
					proxied = strings.Count(logs(), "-> "+c.dst) > before
				}
				if proxied != c.proxied {
					t.Errorf("%s: vm GET %s: proxied=%v, want %v", c.name, c.url, proxied, c.proxied)
				}
			}
		})
	}
}

package capture_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestSquatterOnCapturedPortsServesNoOne: while the proxy and the agent
// are down, a process of the pod under the application's UID binds the
// proxy's and the DNS interceptor's ports and the agent's admin port.
// Captured traffic and probes reach it, but nothing it sends back reaches
// the workload, a local prober or a remote client: lookups, connections
// and probes fail closed, also with the filter rules flushed. Once the
// real owners listen, everything works again.
func TestSquatterOnCapturedPortsServesNoOne(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			w.serveHTTP(8080)
			w.install()

			sq := w.pod.Start(w.pod.CommandAs(context.Background(), appUID, appUID, bins.squatter,
				"-dns", "127.0.0.1:15053", "-tcp", "127.0.0.1:15001,0.0.0.0:15006,127.0.0.1:15090"))
			testenv.WaitListening(t, w.pod, sq.Output, "127.0.0.1:15053", "127.0.0.1:15001", "*:15006", "127.0.0.1:15090")

			for _, args := range [][]string{{"@10.1.0.2", "example.com"}, {"+tcp", "@10.1.0.2", "example.com"}} {
				if got := w.dig(appUID, args...); strings.Contains(got, "192.0.2.66") {
					t.Errorf("dig %v as uid %d was answered by the squatter: %q", args, appUID, got)
				}
			}
			if got, err := w.curl(appUID, "http://10.1.0.2:8080/"); err == nil || strings.Contains(got, "impostor") {
				t.Errorf("outbound connection reached the squatter on the proxy's port: %q, %v", got, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, err := w.remote.Command(ctx, "curl", "-sS", "--max-time", "3", "http://"+w.podIf.IPv4.String()+":8080/").CombinedOutput()
			if err == nil || strings.Contains(string(out), "impostor") {
				t.Errorf("inbound connection reached the squatter on the proxy's port: %q, %v", out, err)
			}
			// The agent's admin endpoint: nothing is captured to it, but
			// a probe must not get the squatter's answer.
			for _, uid := range []int{0, appUID} {
				if got, err := w.curl(uid, "http://127.0.0.1:15090/healthz"); err == nil || strings.Contains(got, "impostor") {
					t.Errorf("uid %d probing the admin port reached the squatter: %q, %v", uid, got, err)
				}
			}
			// The filter rules flushed meanwhile (iptables -F, or the
			// nftables engine's filter_output chain), with no agent to
			// repair them: the guard's copy still holds.
			if backend == nativeNftables {
				w.pod.MustRun("nft", "flush", "chain", "inet", "shunt", "filter_output")
			} else {
				w.pod.MustRun("iptables-"+backend, "-F")
				w.pod.MustRun("ip6tables-"+backend, "-F")
			}
			if got := w.dig(appUID, "@10.1.0.2", "example.com"); strings.Contains(got, "192.0.2.66") {
				t.Errorf("dig with the filter rules flushed was answered by the squatter: %q", got)
			}
			if got, err := w.curl(appUID, "http://127.0.0.1:15090/healthz"); err == nil || strings.Contains(got, "impostor") {
				t.Errorf("admin probe with the filter rules flushed reached the squatter: %q, %v", got, err)
			}
			if strings.Contains(sq.Output(), "accepted") {
				t.Errorf("the squatter completed a handshake:\n%s", sq.Output())
			}
			sq.Stop()

			// The rightful owners: the interceptor (root) and the proxy
			// (its UID).
			serveDNS(t, w.pod, "127.0.0.1:15053", "192.0.2.53")
			if got := w.dig(appUID, "@10.1.0.2", "example.com"); got != "192.0.2.53" {
				t.Errorf("dig through the interceptor = %q, want 192.0.2.53", got)
			}
			testenv.ServeHTTP(t, w.pod, "127.0.0.1:15090", "admin")
			if got, err := w.curl(appUID, "http://127.0.0.1:15090/healthz"); err != nil || got != "admin" {
				t.Errorf("probe of the admin endpoint served by root = %q, %v; want %q", got, err, "admin")
			}
			w.startProxies()
			if !w.fetch(appUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
				t.Errorf("the proxy did not see the connection")
			}
		})
	}
}

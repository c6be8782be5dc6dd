package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A remote control plane (`shunt controlplane`) killed and restarted: DNS
// keeps answering and the agent reconnects; an agent restarted while the
// control plane is down serves the persisted snapshot.
func TestControlPlaneOutages(t *testing.T) {
	w := newWorld(t)
	w.writeResource("services.yaml", externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
	cpState := t.TempDir()
	startCP := func() {
		w.cp = w.pod.Start(w.pod.Command(context.Background(), bins.shunt, "controlplane", "--resources", w.resources,
			"--listen", xdsAddr, "--state-dir", cpState))
		waitFor(t, "the control plane to listen", func() bool {
			out, _ := w.pod.Run("ss", "-Hltn")
			return strings.Contains(out, xdsAddr+" ")
		}, w.cp.Output)
	}
	startCP()
	w.startAgent(xdsAddr)
	w.startProxy()
	vip := w.dig("httpbin.mesh")
	if vip == "" {
		t.Fatalf("httpbin.mesh not resolved\n%s", w.logs())
	}

	w.cp.Stop()
	waitFor(t, "the agent to notice", func() bool {
		_, m := w.admin("/metrics")
		return strings.Contains(m, "shunt_xds_connected 0")
	}, w.logs)
	if got := w.dig("httpbin.mesh"); got != vip {
		t.Errorf("with the control plane down httpbin.mesh = %q, want %s", got, vip)
	}
	if got, err := w.curl(appUID, "http://httpbin.mesh/"); err != nil || !strings.HasPrefix(got, "httpbin") {
		t.Errorf("with the control plane down curl http://httpbin.mesh/ = %q, %v", got, err)
	}
	if code, body := w.admin("/readyz"); code != "200" {
		t.Errorf("not ready with the control plane down: %s %s", code, body)
	}

	startCP()
	waitFor(t, "the agent to reconnect", func() bool {
		_, m := w.admin("/metrics")
		return strings.Contains(m, "shunt_xds_connected 1")
	}, w.logs)
	// A change made after the restart reaches the pod.
	w.writeResource("more.yaml", externalService("more", "more", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
	waitFor(t, "more.mesh to resolve", func() bool { return w.dig("more.mesh") != "" }, w.logs)

	// Agent restarted with the control plane down.
	w.cp.Stop()
	w.stopAgent()
	start := time.Now()
	w.startAgent(xdsAddr) // waits for /readyz: rules in place and a snapshot loaded
	t.Logf("restarted agent ready after %v without a control plane", time.Since(start).Round(time.Millisecond))
	if got := w.dig("httpbin.mesh"); got != vip {
		t.Errorf("restarted agent answered httpbin.mesh = %q, want the persisted %s\n%s", got, vip, w.logs())
	}
	if got := w.dig("more.mesh"); got == "" {
		t.Errorf("restarted agent forgot more.mesh")
	}
	if got, err := w.curl(appUID, "http://httpbin.mesh/"); err != nil || !strings.HasPrefix(got, "httpbin") {
		t.Errorf("restarted agent: curl http://httpbin.mesh/ = %q, %v", got, err)
	}
	if !strings.Contains(w.agent.Output(), "applying the persisted snapshot") {
		t.Errorf("the restarted agent did not say it used the persisted snapshot:\n%s", w.agent.Output())
	}
}

package istio_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/istiod"
	"github.com/shunt-dev/shunt/tests/peers"
)

// shunt as an Istio sidecar's DNS proxy: a ServiceEntry's host resolves in
// the workload to the VIP istiod allocated (read from istiod's own NDS
// answer to another sidecar), a new ServiceEntry file within 2 s, and a
// removed one stops resolving.
func TestIstiod(t *testing.T) {
	w := newWorld(t)
	w.cp.ServiceEntry("httpbin", "httpbin.org")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A second sidecar of the same namespace: istiod's VIPs are the
	// ServiceEntry's, the same for every proxy that sees it.
	ch, err := w.cp.Watch(ctx, istiod.NodeID("10.0.0.9", "probe"))
	if err != nil {
		t.Fatal(err)
	}
	vip := waitVIP(t, ch, "httpbin.org", 30*time.Second)

	w.startShunt("app")
	peers.WaitFor(t, 10*time.Second, "httpbin.org to resolve to "+strings.Join(vip, ","), func() bool {
		return slices.Equal(w.Dig("A", "httpbin.org"), vip)
	})

	t.Cleanup(func() {
		if out := w.Agent.Output(); strings.Contains(out, "NACK") {
			t.Errorf("shunt rejected some of istiod's configuration:\n%s", out)
		}
	})

	t.Run("new ServiceEntry resolves within 2s, a removed one stops", func(t *testing.T) {
		start := time.Now()
		w.cp.ServiceEntry("example", "www.example.com")
		vip := waitVIP(t, ch, "www.example.com", 2*time.Second)
		served := time.Now()
		peers.WaitFor(t, 2*time.Second-served.Sub(start), "www.example.com to resolve to "+strings.Join(vip, ","), func() bool {
			return slices.Equal(w.Dig("A", "www.example.com"), vip)
		})
		t.Logf("www.example.com %v: served by istiod %v after the file, resolved %v after that",
			vip, served.Sub(start).Round(time.Millisecond), time.Since(served).Round(time.Millisecond))
		// Still the first one too.
		if got := w.Dig("A", "httpbin.org"); len(got) == 0 {
			t.Errorf("httpbin.org stopped resolving: %v", got)
		}

		// Its file removed, istiod's next table leaves it out.
		w.cp.RemoveConfig("example")
		peers.WaitFor(t, 5*time.Second, "www.example.com to stop resolving to its VIP", func() bool {
			return !slices.Equal(w.Dig("A", "www.example.com"), vip)
		})
	})

	// The default above is shunt's xDS proxy holding the stream; without
	// it shunt subscribes to istiod alone.
	t.Run("direct mode", func(t *testing.T) {
		if out := w.Agent.Output(); strings.Contains(out, "NACK") {
			t.Errorf("shunt rejected some of istiod's configuration:\n%s", out)
		}
		w.StopShunt()
		w.startShunt("app2", "--xds-socket", "off")
		peers.WaitFor(t, 10*time.Second, "httpbin.org to resolve to "+strings.Join(vip, ","), func() bool {
			return slices.Equal(w.Dig("A", "httpbin.org"), vip)
		})
	})
}

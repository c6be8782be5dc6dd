package kuma_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/kumacp"
	"github.com/shunt-dev/shunt/tests/peers"
)

// kuma-cp over incremental xDS (shunt run --xds-delta): the names resolve
// from the deltas, a new ExternalService comes as one, a deleted one goes,
// and kuma-cp sees one DELTA_GRPC stream.
func TestKumaCPDeltaXDS(t *testing.T) {
	w := newWorld(t, kumacp.Options{})
	w.cp.Put("/meshes/default", seedMesh(true))
	w.cp.Put("/meshes/default/external-services/httpbin", externalService("httpbin", "httpbin.org:443"))
	w.startShunt("dp-1", "--xds-delta")
	w.waitResolves(t, 20*time.Second, "dp-1", "httpbin.mesh", "httpbin.org")

	w.cp.Put("/meshes/default/external-services/example", externalService("example", "example.com:443"))
	peers.WaitFor(t, 20*time.Second, "kuma-cp to allocate example.com a VIP", func() bool { return len(w.vips("dp-1")["example.com"]) > 0 })
	allocated := time.Now()
	// kuma-cp sends the change on its refresh schedule (about 2 s here);
	// the SotW test holds the 2 s budget, this one leaves slack for it.
	answered := w.waitResolves(t, 5*time.Second, "dp-1", "example.mesh", "example.com")
	t.Logf("example.com answered %v after kuma-cp allocated its VIP", answered.Sub(allocated).Round(time.Millisecond))
	vip, _ := byFamily(w.vips("dp-1")["example.com"])
	w.cp.Delete("/meshes/default/external-services/example")
	peers.WaitFor(t, 5*time.Second, "example.com to stop resolving to its VIP", func() bool {
		got, _ := byFamily(w.Dig("A", "example.com"))
		return !slices.Contains(got, vip[0])
	})
	// kuma-cp's own word: one stream for the node, incremental.
	log := w.cp.Log()
	if c := strings.Count(log, "proxy connected"); c != 1 || !strings.Contains(log, `"mode": "DELTA_GRPC"`) {
		t.Errorf("kuma-cp saw %d streams connect (want 1), DELTA_GRPC in its log: %v", c, strings.Contains(log, "DELTA_GRPC"))
	}
	if strings.Contains(log, "already an active stream") {
		t.Error("kuma-cp refused a second stream for the node")
	}

	// With no socket, the proxy holds the delta stream for shunt alone.
	w.StopShunt()
	w.startShunt("dp-2", "--xds-delta", "--xds-socket", "off")
	w.waitResolves(t, 20*time.Second, "dp-2", "httpbin.mesh", "httpbin.org")
	if c := strings.Count(w.cp.Log(), `"mode": "DELTA_GRPC"`); c < 3 {
		t.Errorf("kuma-cp logged DELTA_GRPC %d times, want dp-2's stream too", c)
	}
}

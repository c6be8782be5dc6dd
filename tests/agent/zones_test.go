package agent_test

import (
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// The page's zone-pinned pair: with locality-aware load balancing,
// httpbin.mesh leads to zone-1.httpbin.org from zone-1 and to
// zone-2.httpbin.org from zone-2.
func TestZonePinnedServices(t *testing.T) {
	w := newWorld(t)
	w.writeResource("zones.yaml", `type: Mesh
name: default
routing:
  localityAwareLoadBalancing: true
---
type: ExternalService
mesh: default
name: httpbin-for-zone-1
tags:
  kuma.io/service: httpbin
  kuma.io/protocol: http
  kuma.io/zone: zone-1
networking:
  address: zone-1.httpbin.org:80
---
type: ExternalService
mesh: default
name: httpbin-for-zone-2
tags:
  kuma.io/service: httpbin
  kuma.io/protocol: http
  kuma.io/zone: zone-2
networking:
  address: zone-2.httpbin.org:80
`)
	for _, zone := range []string{"zone-1", "zone-2"} {
		w.stateDir = testenv.ReadableTempDir(t)
		w.startAgent("", "--zone", zone)
		w.startProxy(zone)

		got, err := w.curl(appUID, "http://httpbin.mesh/")
		if err != nil || !strings.HasPrefix(got, "httpbin") {
			t.Fatalf("%s: curl http://httpbin.mesh/ = %q, %v\n%s", zone, got, err, w.logs())
		}
		if !strings.Contains(w.proxy.Output(), "cluster=external:httpbin-for-"+zone+" ") {
			t.Errorf("%s: httpbin.mesh did not lead to the %s service:\n%s", zone, zone, w.proxy.Output())
		}
		other := map[string]string{"zone-1": "zone-2", "zone-2": "zone-1"}[zone]
		if strings.Contains(w.proxy.Output(), "cluster=external:httpbin-for-"+other) {
			t.Errorf("%s: traffic went to the %s service", zone, other)
		}
		w.proxy.Stop()
		w.stopAgent()
	}
}

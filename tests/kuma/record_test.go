package kuma_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shunt-dev/shunt/tests/kumacp"
	"github.com/shunt-dev/shunt/tests/peers"
	"github.com/shunt-dev/shunt/wire"
)

// TestRecordFixtures captures kuma-cp's responses for xdsclient's unit
// tests. It runs only when SHUNT_RECORD_KUMA names the output directory
// (scripts/record-kuma-fixtures.sh sets it).
func TestRecordFixtures(t *testing.T) {
	out := os.Getenv("SHUNT_RECORD_KUMA")
	if out == "" {
		t.Skip("SHUNT_RECORD_KUMA is not set; scripts/record-kuma-fixtures.sh records the fixtures")
	}
	cp := kumacp.Start(t, kumacp.Options{})
	cp.Put("/meshes/default", seedMesh(true))
	cp.Put("/meshes/default/external-services/httpbin", externalService("httpbin", "httpbin.org:443"))
	for _, c := range []struct {
		dir, node string
		features  []string
		pass      bool
	}{
		// One node each: kuma-cp keeps a closed stream's node for a while
		// and refuses a new stream for it meanwhile.
		{"dns-filter", "dp-1", []string{}, true},
		{"embedded-dns", "dp-2", []string{wire.KumaFeatureEmbeddedDNS}, true},
		{"embedded-dns-no-passthrough", "dp-3", []string{wire.KumaFeatureEmbeddedDNS}, false},
	} {
		cp.Put("/meshes/default", seedMesh(c.pass))
		rec := record(t, cp, *buildMeta(t, c.features, dataplane(t, c.node)), "")
		summary := peers.WriteFixtures(t, filepath.Join(out, c.dir),
			fmt.Sprintf("kuma-cp %s, node default.%s, features %q, mesh passthrough %v\n", kumacp.Version, c.node, c.features, c.pass),
			peers.ResourceNames, peers.Fixture{Name: "lds", Resp: rec.Listeners}, peers.Fixture{Name: "cds", Resp: rec.Clusters},
			peers.Fixture{Name: "eds", Resp: rec.Endpoints})
		t.Logf("%s:\n%s", c.dir, summary)
	}
}

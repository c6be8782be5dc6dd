package kuma_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/shunt-dev/shunt/tests/kumacp"
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
		dir := filepath.Join(out, c.dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var summary strings.Builder
		fmt.Fprintf(&summary, "kuma-cp %s, node default.%s, features %q, mesh passthrough %v\n", kumacp.Version, c.node, c.features, c.pass)
		for _, r := range []struct {
			name string
			resp *discoveryv3.DiscoveryResponse
		}{{"lds", rec.Listeners}, {"cds", rec.Clusters}, {"eds", rec.Endpoints}} {
			if r.resp == nil {
				continue
			}
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r.resp)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, r.name+".pb"), b, 0o644); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&summary, "%s version %s: %d resources\n", r.name, r.resp.GetVersionInfo(), len(r.resp.GetResources()))
			for _, n := range kumacp.ResourceNames(r.resp) {
				fmt.Fprintf(&summary, "  %s\n", n)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "README"), []byte(summary.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s:\n%s", c.dir, summary.String())
	}
}

package istio_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/shunt-dev/shunt/tests/istiod"
)

// fixedAddress is a ServiceEntry with addresses of its own: istiod serves
// them, allocating nothing.
const fixedAddress = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: default
spec:
  hosts:
  - api.internal.example
  addresses:
  - 192.0.2.10
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: 192.0.2.11
  ports:
  - number: 443
    name: tls
    protocol: TLS
`

// TestRecordFixtures captures istiod's responses for xdsclient's unit
// tests. It runs only when SHUNT_RECORD_ISTIO names the output directory
// (scripts/record-istio-fixtures.sh sets it).
func TestRecordFixtures(t *testing.T) {
	out := os.Getenv("SHUNT_RECORD_ISTIO")
	if out == "" {
		t.Skip("SHUNT_RECORD_ISTIO is not set; scripts/record-istio-fixtures.sh records the fixtures")
	}
	cp := istiod.Start(t)
	cp.ServiceEntry("httpbin", "httpbin.org")
	cp.ServiceEntry("example", "www.example.com")
	cp.WriteConfig("api", fixedAddress)
	node := istiod.NodeID("10.0.0.1", "app")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rec, err := cp.Record(ctx, node, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(out, "serviceentries")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var summary strings.Builder
	fmt.Fprintf(&summary, "istiod (istio.io/istio %s), node %s, metadata DNS_CAPTURE=true DNS_AUTO_ALLOCATE=true;\n"+
		"ServiceEntries httpbin.org and www.example.com (no addresses: allocated), api.internal.example (192.0.2.10)\n", istiod.Version, node)
	for _, r := range []struct {
		name string
		resp *discoveryv3.DiscoveryResponse
	}{{"lds", rec.Listeners}, {"cds", rec.Clusters}, {"eds", rec.Endpoints}, {"nds", rec.NameTable}} {
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
		for _, n := range istiod.ResourceNames(r.resp) {
			fmt.Fprintf(&summary, "  %s\n", n)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte(summary.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", summary.String())
}

package istio_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/istiod"
	"github.com/shunt-dev/shunt/tests/peers"
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
	summary := peers.WriteFixtures(t, filepath.Join(out, "serviceentries"),
		fmt.Sprintf("istiod (istio.io/istio %s), node %s, metadata DNS_CAPTURE=true DNS_AUTO_ALLOCATE=true;\n"+
			"ServiceEntries httpbin.org and www.example.com (no addresses: allocated), api.internal.example (192.0.2.10)\n", istiod.Version, node),
		istiod.ResourceNames, peers.Fixture{Name: "lds", Resp: rec.Listeners}, peers.Fixture{Name: "cds", Resp: rec.Clusters},
		peers.Fixture{Name: "eds", Resp: rec.Endpoints}, peers.Fixture{Name: "nds", Resp: rec.NameTable})
	t.Logf("%s", summary)
}

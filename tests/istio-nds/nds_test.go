// Package nds checks shunt's NameTable decoder (xdsclient.DecodeNameTable,
// which reads the wire form by nds.proto's field numbers) against Istio's
// own generated type, istio.io/istio/pkg/dns/proto. It is a module of its
// own so that shunt's go.mod never depends on istio.io/istio.
package nds

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	dnsProto "istio.io/istio/pkg/dns/proto"

	"github.com/shunt-dev/shunt/xdsclient"
)

func same(t *testing.T, got map[string]xdsclient.NameInfo, want *dnsProto.NameTable) {
	t.Helper()
	if !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want.GetTable()))) {
		t.Fatalf("hosts %v, the generated type has %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want.GetTable())))
	}
	for h, w := range want.GetTable() {
		g := got[h]
		//lint:ignore SA1019 alt_hosts is deprecated, and still decoded
		alt := w.GetAltHosts()
		if !slices.Equal(g.IPs, w.GetIps()) || g.Registry != w.GetRegistry() || g.Shortname != w.GetShortname() ||
			g.Namespace != w.GetNamespace() || !slices.Equal(g.AltHosts, alt) {
			t.Errorf("%s = %+v, the generated type has %v", h, g, w)
		}
	}
}

// Bytes from Istio's generated type, as istiod marshals them.
func TestGeneratedType(t *testing.T) {
	nt := &dnsProto.NameTable{Table: map[string]*dnsProto.NameTable_NameInfo{
		"httpbin.org":                        {Ips: []string{"240.240.0.1", "2001:2::1"}, Registry: "External"},
		"reviews.default.svc.cluster.local":  {Ips: []string{"10.96.0.12"}, Registry: "Kubernetes", Shortname: "reviews", Namespace: "default"},
		"mysql-0.mysql.db.svc.cluster.local": {Ips: []string{"10.244.1.7"}, Registry: "Kubernetes", Shortname: "mysql-0.mysql", Namespace: "db"},
		"old.example":                        {Ips: []string{"240.240.0.2"}, AltHosts: []string{"old", "old.ns"}},
		"*.wild.example":                     {Ips: []string{"240.240.0.3"}},
		"headless.example":                   {},
	}}
	for _, opts := range []proto.MarshalOptions{{}, {Deterministic: true}} {
		b, err := opts.Marshal(nt)
		if err != nil {
			t.Fatal(err)
		}
		got, err := xdsclient.DecodeNameTable(b)
		if err != nil {
			t.Fatal(err)
		}
		same(t, got, nt)
	}
}

// istiod's recorded answer (scripts/record-istio-fixtures.sh): the
// generated type and shunt read the same table from it.
func TestRecordedNameTable(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "fixtures", "istio", "serviceentries", "nds.pb"))
	if err != nil {
		t.Fatal(err)
	}
	var resp discoveryv3.DiscoveryResponse
	if err := proto.Unmarshal(b, &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 {
		t.Fatalf("%d resources", len(resp.GetResources()))
	}
	a := resp.GetResources()[0]
	var nt dnsProto.NameTable
	if err := a.UnmarshalTo(&nt); err != nil {
		t.Fatalf("the generated type refuses istiod's NameTable: %v", err)
	}
	got, err := xdsclient.DecodeNameTable(a.GetValue())
	if err != nil {
		t.Fatal(err)
	}
	same(t, got, &nt)
	if len(nt.GetTable()) < 3 {
		t.Errorf("recorded table %v, want the three ServiceEntries", nt.GetTable())
	}
}

package xdsclient

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/shunt-dev/shunt/mesh"
)

// istioFixture reads what istiod sent a sidecar, as
// scripts/record-istio-fixtures.sh recorded it; type → response.
func istioFixture(t *testing.T) map[string]*discoveryv3.DiscoveryResponse {
	t.Helper()
	dir := filepath.Join("..", "tests", "fixtures", "istio", "serviceentries")
	out := map[string]*discoveryv3.DiscoveryResponse{}
	for _, f := range []string{"lds.pb", "cds.pb", "eds.pb", "nds.pb"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		var r discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[r.GetTypeUrl()] = &r
	}
	return out
}

// resources decodes a recorded response's resources into the messages a
// go-control-plane cache serves: Envoy's types, and for NDS a NameTable
// built from nds.proto's layout by the protobuf runtime.
func resources(t *testing.T, r *discoveryv3.DiscoveryResponse) []types.Resource {
	t.Helper()
	var out []types.Resource
	for _, a := range r.GetResources() {
		if a.GetTypeUrl() == NameTableType {
			m := newNameTable(t, nil)
			if err := proto.Unmarshal(a.GetValue(), m); err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
			continue
		}
		m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// istioServer is go-control-plane's server with a snapshot cache for
// Envoy's types and a linear cache for Istio's NameTable, as a control
// plane that serves NDS would hold them.
type istioServer struct {
	snaps cachev3.SnapshotCache
	nds   *cachev3.LinearCache
	addr  string

	mu       sync.Mutex
	requests []*discoveryv3.DiscoveryRequest
}

func startIstioServer(t *testing.T) *istioServer {
	t.Helper()
	s := &istioServer{snaps: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), nds: cachev3.NewLinearCache(NameTableType)}
	mux := &cachev3.MuxCache{
		Classify: func(r *cachev3.Request) string {
			if r.GetTypeUrl() == NameTableType {
				return "nds"
			}
			return "envoy"
		},
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return "envoy" },
		Caches:        map[string]cachev3.Cache{"envoy": s.snaps, "nds": s.nds},
	}
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.requests = append(s.requests, req)
		return nil
	}}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), mux, cb))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return s
}

func (s *istioServer) find(match func(*discoveryv3.DiscoveryRequest) bool) *discoveryv3.DiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.requests {
		if match(r) {
			return r
		}
	}
	return nil
}

// istiod's own responses, through the client's whole stream: the names of
// the NameTable are merged with what the listeners and clusters give, and
// an NDS change alone is published.
func TestIstioFixtures(t *testing.T) {
	rec := istioFixture(t)
	srv := startIstioServer(t)
	node := "sidecar~10.0.0.1~app.default~default.svc.cluster.local"
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: resources(t, rec[ListenerType]),
		resourcev3.ClusterType:  resources(t, rec[ClusterType]),
		resourcev3.EndpointType: resources(t, rec[EndpointType]),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.snaps.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
	tables := resources(t, rec[NameTableType])
	if len(tables) != 1 {
		t.Fatalf("istiod sent %d NameTables, want 1", len(tables))
	}
	if err := srv.nds.UpdateResource("", tables[0]); err != nil {
		t.Fatal(err)
	}
	// What istiod put in the table, read by the protobuf runtime.
	raw, _ := proto.Marshal(tables[0])
	want := readNameTable(t, raw)

	c, err := New(Config{Server: srv.addr, NodeID: node, NameTable: true, Logger: quietLogger(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	first := nextUpdate(t, c, 5*time.Second, func(*mesh.AgentSnapshot) bool { return true })
	for _, host := range []string{"httpbin.org", "www.example.com", "api.internal.example"} {
		ips := want[host].IPs
		if len(ips) == 0 {
			t.Fatalf("the recorded NameTable has no %s: %v", host, want)
		}
		var wantAddrs []netip.Addr
		for _, ip := range ips {
			wantAddrs = append(wantAddrs, netip.MustParseAddr(ip))
		}
		if !slices.Equal(first.Names[host], wantAddrs) {
			t.Errorf("%s = %v, want istiod's %v", host, first.Names[host], wantAddrs)
		}
	}
	// ServiceEntries without addresses got VIPs from istiod's allocator.
	for _, host := range []string{"httpbin.org", "www.example.com"} {
		if a := first.Names[host]; len(a) == 0 || !netip.MustParsePrefix("240.240.0.0/16").Contains(a[0]) {
			t.Errorf("%s = %v, want an allocated VIP from 240.240.0.0/16", host, a)
		}
	}
	// istiod's PassthroughCluster (REGISTRY_ONLY would leave it out) and
	// the STATIC ServiceEntry's endpoint.
	if !first.Passthrough || !slices.Contains(first.AllowedEndpoints, netip.MustParseAddrPort("192.0.2.11:443")) {
		t.Errorf("passthrough %v, endpoints %v; want true and 192.0.2.11:443", first.Passthrough, first.AllowedEndpoints)
	}
	if !strings.HasPrefix(first.Version, "1/1/1/nds:") {
		t.Errorf("version %q, want 1/1/1/nds:<NDS version>", first.Version)
	}
	// NDS is asked for as Istio's agent asks: no names; and ACKed.
	if r := srv.find(func(r *discoveryv3.DiscoveryRequest) bool { return r.GetTypeUrl() == NameTableType }); r == nil || len(r.GetResourceNames()) != 0 {
		t.Errorf("NDS request = %v, want one without resource names", r)
	}
	eventually(t, 5*time.Second, "the NameTable ACKed", func() bool { return c.Status().Acked[NameTableType] != "" })

	// A new ServiceEntry: a new NameTable, nothing else changes.
	want["new.example"] = NameInfo{IPs: []string{"240.240.1.1"}, Registry: "External"}
	if err := srv.nds.UpdateResource("", newNameTable(t, want)); err != nil {
		t.Fatal(err)
	}
	next := nextUpdate(t, c, 5*time.Second, func(s *mesh.AgentSnapshot) bool { return len(s.Names["new.example"]) > 0 })
	if !slices.Equal(next.Names["new.example"], []netip.Addr{netip.MustParseAddr("240.240.1.1")}) || !slices.Equal(next.Names["httpbin.org"], first.Names["httpbin.org"]) {
		t.Errorf("after the NDS update: %v", next.Names)
	}

	// A bad table is refused whole (NACK, naming the host and the value);
	// the last good names stay.
	bad := map[string]NameInfo{"broken.example": {IPs: []string{"240.240.1.999"}}}
	if err := srv.nds.UpdateResource("", newNameTable(t, bad)); err != nil {
		t.Fatal(err)
	}
	var nack *discoveryv3.DiscoveryRequest
	eventually(t, 5*time.Second, "the NameTable NACKed", func() bool {
		nack = srv.find(func(r *discoveryv3.DiscoveryRequest) bool {
			return r.GetTypeUrl() == NameTableType && r.GetErrorDetail() != nil
		})
		return nack != nil
	})
	if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, "broken.example") || !strings.Contains(msg, "240.240.1.999") {
		t.Errorf("NACK detail %q, want the host and the address", msg)
	}
	if cur := c.Current(); len(cur.Names["new.example"]) == 0 || len(cur.Names["broken.example"]) != 0 {
		t.Errorf("after the NACK: %v", cur.Names)
	}
}

// Without NameTables (any flavour but istio) the client does not ask for
// NDS, and ignores a NameTable pushed at it.
func TestNoNameTablesWithoutIstio(t *testing.T) {
	rec := istioFixture(t)
	srv := startIstioServer(t)
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: resources(t, rec[ListenerType]),
		resourcev3.ClusterType:  resources(t, rec[ClusterType]),
		resourcev3.EndpointType: resources(t, rec[EndpointType]),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.snaps.SetSnapshot(context.Background(), "n", snap); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Server: srv.addr, NodeID: "n", Logger: quietLogger(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	first := nextUpdate(t, c, 5*time.Second, func(*mesh.AgentSnapshot) bool { return true })
	if len(first.Names) != 0 {
		t.Errorf("names without NDS = %v", first.Names)
	}
	if r := srv.find(func(r *discoveryv3.DiscoveryRequest) bool { return r.GetTypeUrl() == NameTableType }); r != nil {
		t.Errorf("NDS requested without NameTables: %v", r)
	}
}

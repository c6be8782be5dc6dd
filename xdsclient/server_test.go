package xdsclient

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/shunt-dev/shunt/mesh"
)

// gcpServer is go-control-plane's own server over a snapshot cache, with
// every request the client sent recorded.
type gcpServer struct {
	cache cachev3.SnapshotCache
	addr  string

	mu       sync.Mutex
	requests []*discoveryv3.DiscoveryRequest
}

func startGCPServer(t *testing.T, opts ...grpc.ServerOption) *gcpServer {
	t.Helper()
	s := &gcpServer{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.requests = append(s.requests, req)
		return nil
	}}
	xds := serverv3.NewServer(context.Background(), s.cache, cb)
	g := grpc.NewServer(opts...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, xds)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return s
}

func (s *gcpServer) find(match func(*discoveryv3.DiscoveryRequest) bool) *discoveryv3.DiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.requests {
		if match(r) {
			return r
		}
	}
	return nil
}

func (s *gcpServer) set(t *testing.T, node, version string, listeners, clusters, endpoints []types.Resource) {
	t.Helper()
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: listeners,
		resourcev3.ClusterType:  clusters,
		resourcev3.EndpointType: endpoints,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}

func TestNACKKeepsLastGoodSnapshot(t *testing.T) {
	srv := startGCPServer(t)
	clusters := []types.Resource{
		cluster("outbound:passthrough", clusterv3.Cluster_ORIGINAL_DST),
		cluster("egress", clusterv3.Cluster_EDS),
		cluster("external:ip", clusterv3.Cluster_STATIC, "192.0.2.1:443"),
	}
	good := []types.Resource{dnsListener(t, "dns", domain{"httpbin.mesh", []string{"240.0.0.1"}})}
	srv.set(t, "node-1", "1", good, clusters, []types.Resource{assignment("egress-svc", "192.0.2.10:10002")})

	c, err := New(Config{
		Server: srv.addr, NodeID: "node-1", Cluster: "vm", Zone: "zone-1", Mesh: "payments",
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{MetadataMesh: structpb.NewStringValue("payments"), "team": structpb.NewStringValue("a")}},
		Logger:   quietLogger(), Backoff: fastBackoff(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	first := nextUpdate(t, c, 5*time.Second, func(*mesh.AgentSnapshot) bool { return true })
	if first.Version != "1/1/1" || !first.Passthrough ||
		!slices.Equal(first.AllowedEndpoints, addrPorts("192.0.2.1:443", "192.0.2.10:10002")) ||
		!slices.Equal(first.Names["httpbin.mesh"], addrs("240.0.0.1")) {
		t.Fatalf("first snapshot = %+v", first)
	}

	// The node identifies itself as configured.
	hello := srv.find(func(r *discoveryv3.DiscoveryRequest) bool { return r.GetNode() != nil })
	n := hello.GetNode()
	md := n.GetMetadata().GetFields()
	if n.GetId() != "node-1" || n.GetCluster() != "vm" || n.GetLocality().GetZone() != "zone-1" ||
		md[MetadataMesh].GetStringValue() != "payments" || md["team"].GetStringValue() != "a" {
		t.Errorf("node sent = %v", n)
	}
	// EDS is asked for by name, for the EDS clusters only.
	if r := srv.find(func(r *discoveryv3.DiscoveryRequest) bool { return r.GetTypeUrl() == EndpointType }); !slices.Equal(r.GetResourceNames(), []string{"egress-svc"}) {
		t.Errorf("EDS request names = %v, want [egress-svc]", r.GetResourceNames())
	}

	bad := []types.Resource{dnsListener(t, "dns", domain{"httpbin.mesh", []string{"not-an-ip"}})}
	srv.set(t, "node-1", "2", bad, clusters, []types.Resource{assignment("egress-svc", "192.0.2.10:10002")})
	var nack *discoveryv3.DiscoveryRequest
	eventually(t, 5*time.Second, "the server receives a NACK", func() bool {
		nack = srv.find(func(r *discoveryv3.DiscoveryRequest) bool { return r.GetErrorDetail() != nil })
		return nack != nil
	})
	want := `listener dns: dns_filter config: invalid address "not-an-ip" for name httpbin.mesh`
	if nack.GetTypeUrl() != ListenerType || nack.GetVersionInfo() != "1" || !strings.Contains(nack.GetErrorDetail().GetMessage(), want) {
		t.Errorf("NACK = type %s version %q detail %q; want LDS, version 1 (the last good), detail with %q",
			nack.GetTypeUrl(), nack.GetVersionInfo(), nack.GetErrorDetail().GetMessage(), want)
	}
	// The clusters of version 2 are fine and ACKed, but without their
	// listeners nothing new may be published.
	time.Sleep(2 * SettleDelay)
	select {
	case s := <-c.Updates():
		t.Errorf("published after a NACK: %+v", s)
	default:
	}
	if c.Current() != first {
		t.Errorf("Current after a NACK = %+v, want the last good one", c.Current())
	}
	if st := c.Status(); !strings.Contains(st.LastNACK, want) || st.Acked[ListenerType] != "1" || !st.Connected {
		t.Errorf("status after NACK = %+v", st)
	}

	fixed := []types.Resource{dnsListener(t, "dns", domain{"httpbin.mesh", []string{"240.0.0.1"}}, domain{"new.mesh", []string{"240.0.0.2"}})}
	srv.set(t, "node-1", "3", fixed, clusters[1:], []types.Resource{assignment("egress-svc", "192.0.2.11:10002")})
	third := nextUpdate(t, c, 5*time.Second, func(*mesh.AgentSnapshot) bool { return true })
	if third.Version != "3/3/3" || third.Passthrough || !slices.Equal(third.Names["new.mesh"], addrs("240.0.0.2")) ||
		!slices.Equal(third.AllowedEndpoints, addrPorts("192.0.2.1:443", "192.0.2.11:10002")) {
		t.Errorf("snapshot after the fix = %+v", third)
	}
	if st := c.Status(); st.LastNACK != "" || st.Acked[ListenerType] != "3" {
		t.Errorf("status after the fix = %+v", st)
	}
}

func TestUpdatesLatestWins(t *testing.T) {
	srv := startGCPServer(t)
	c, err := New(Config{Server: srv.addr, NodeID: "n", Logger: quietLogger(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	// Nobody reads Updates while versions go by: the client must not block.
	for i := 1; i <= 5; i++ {
		v := string(rune('0' + i))
		vip := netip.AddrFrom4([4]byte{240, 0, 0, byte(i)}).String()
		srv.set(t, "n", v, []types.Resource{dnsListener(t, "dns", domain{"a.mesh", []string{vip}})}, nil, nil)
		eventually(t, 5*time.Second, "version "+v+" accepted", func() bool { return c.Status().SnapshotVersion == v+"/"+v })
	}
	select {
	case s := <-c.Updates():
		if s.Version != "5/5" {
			t.Errorf("buffered update = %s, want the latest, 5/5", s.Version)
		}
	default:
		t.Error("no update buffered")
	}
}

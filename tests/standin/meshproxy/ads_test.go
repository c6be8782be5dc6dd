package main

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

type nackRecorder struct {
	serverv3.CallbackFuncs
	mu    sync.Mutex
	nacks []string
	acks  []string
}

// A cluster with a field the double does not implement is NACKed with the
// field's path, and the clusters before it stay in force.
func TestNACKNamesTheField(t *testing.T) {
	snaps := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	rec := &nackRecorder{}
	rec.StreamRequestFunc = func(_ int64, r *discoveryv3.DiscoveryRequest) error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if r.GetErrorDetail() != nil {
			rec.nacks = append(rec.nacks, r.GetErrorDetail().GetMessage())
		} else if r.GetResponseNonce() != "" && r.GetTypeUrl() == resource.ClusterType {
			rec.acks = append(rec.acks, r.GetVersionInfo())
		}
		return nil
	}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), snaps, rec))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	defer g.Stop()

	good := &clusterv3.Cluster{Name: "good", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}, LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED, ConnectTimeout: durationpb.New(time.Second)}
	set := func(version string, cs ...types.Resource) {
		s, err := cache.NewSnapshot(version, map[resource.Type][]types.Resource{resource.ClusterType: cs, resource.ListenerType: {}})
		if err != nil {
			t.Fatal(err)
		}
		if err := snaps.SetSnapshot(context.Background(), "n", s); err != nil {
			t.Fatal(err)
		}
	}
	set("1", good)
	p := &proxy{node: &corev3.Node{Id: "n"}, xdsTarget: ln.Addr().String(), bound: map[string]*bound{}}
	p.rt.Store(&runtime{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.subscribe(ctx)
	wait := func(what string, f func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !f(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	wait("the first clusters", func() bool { return p.rt.Load().clusters["good"] != nil })

	bad := &clusterv3.Cluster{Name: "bad", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}, ConnectTimeout: durationpb.New(time.Second),
		CircuitBreakers: &clusterv3.CircuitBreakers{}}
	set("2", good, bad)
	wait("a NACK", func() bool { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.nacks) > 0 })
	rec.mu.Lock()
	msg := rec.nacks[0]
	rec.mu.Unlock()
	if !strings.Contains(msg, "cluster bad.circuit_breakers: field not implemented by the double") {
		t.Errorf("NACK says %q", msg)
	}
	if rt := p.rt.Load(); rt.clusters["good"] == nil || rt.clusters["bad"] != nil {
		t.Errorf("after the NACK the clusters are %v, want the previous ones", rt.clusters)
	}
}

func TestSelectChain(t *testing.T) {
	mk := func(name string, port uint32, sni string, tp string) *chain {
		return &chain{name: name, match: fcm(port, sni, tp)}
	}
	li := &lis{chains: []*chain{mk("port", 443, "", ""), mk("sni", 0, "a{mesh=m}", "tls"), mk("wild", 0, "*.example.com", "tls"), mk("raw", 0, "", "raw_buffer")}, defaultChan: &chain{name: "default"}}
	dst := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port) }
	for _, c := range []struct {
		port          uint16
		sni, tp, want string
	}{
		{443, "a{mesh=m}", "tls", "port"},
		{80, "a{mesh=m}", "tls", "sni"},
		{80, "x.example.com", "tls", "wild"},
		{80, "b{mesh=m}", "tls", "default"},
		{80, "", "raw_buffer", "raw"},
	} {
		got := selectChain(li, dst(c.port), c.sni, c.tp)
		if got == nil || got.name != c.want {
			t.Errorf("port %d sni %q %s: chain %v, want %s", c.port, c.sni, c.tp, got, c.want)
		}
	}
}

package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fcm is a filter chain match on a destination port (0: any), a server
// name ("": any) and a transport protocol ("": any).
func fcm(port uint32, sni, tp string) *listenerv3.FilterChainMatch {
	m := &listenerv3.FilterChainMatch{TransportProtocol: tp}
	if port != 0 {
		m.DestinationPort = wrapperspb.UInt32(port)
	}
	if sni != "" {
		m.ServerNames = []string{sni}
	}
	return m
}

// An EDS cluster takes its endpoints from the assignment received under
// its service name; before that it has none, as a warming Envoy cluster.
func TestEDSCluster(t *testing.T) {
	c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: "svc", EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}
	st := xdsState{clusters: map[string]*clusterv3.Cluster{"c": c}}
	rt, err := build(st)
	if err != nil || len(rt.clusters["c"].endpoints) != 0 {
		t.Fatalf("before EDS: %v %v", rt, err)
	}
	st.cla = map[string]*endpointv3.ClusterLoadAssignment{"svc": {ClusterName: "svc", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
			Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.7", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}}}}}}}}
	rt, err = build(st)
	if err != nil {
		t.Fatal(err)
	}
	if eps := rt.clusters["c"].endpoints; len(eps) != 1 || eps[0].String() != "10.0.0.7:8080" {
		t.Errorf("endpoints %v", eps)
	}
	p := &proxy{state: st}
	if got := p.edsNames(); len(got) != 1 || got[0] != "svc" {
		t.Errorf("EDS subscription %v, want [svc]", got)
	}
}

// The admin API answers /ready as Envoy's does (503 before the first
// configuration, LIVE after) and writes its address where the supervisor
// asks.
func TestAdminReady(t *testing.T) {
	p := &proxy{bound: map[string]*bound{}}
	path := filepath.Join(t.TempDir(), "admin")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.serveAdmin(ctx, "127.0.0.1:0", path, cancel)
	var addr []byte
	for i := 0; i < 100 && len(addr) == 0; i++ {
		addr, _ = os.ReadFile(path)
		time.Sleep(20 * time.Millisecond)
	}
	get := func() (int, string) {
		resp, err := http.Get("http://" + string(addr) + "/ready")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(); code != http.StatusServiceUnavailable {
		t.Errorf("before any configuration /ready = %d", code)
	}
	p.mu.Lock()
	p.ready = true
	p.mu.Unlock()
	if code, body := get(); code != 200 || body != "LIVE\n" {
		t.Errorf("/ready = %d %q", code, body)
	}
}

package xdsproxy

import (
	"context"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// deltaEnvoy is Envoy's incremental ADS client over the socket: wildcard
// clusters and listeners, endpoints and route r1 by name; it applies each
// response's resources and removals and ACKs it, or NACKs where reject
// says so (keeping what it had).
type deltaEnvoy struct {
	mu        sync.Mutex
	resources map[string]map[string]*anypb.Any
	removed   []string
	reject    func(*discoveryv3.DeltaDiscoveryResponse) string
	err       error
}

func startDeltaEnvoy(t *testing.T, sock string, node *corev3.Node, reject func(*discoveryv3.DeltaDiscoveryResponse) string) *deltaEnvoy {
	t.Helper()
	e := &deltaEnvoy{resources: map[string]map[string]*anypb.Any{}, reject: reject}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		err := func() error {
			for _, r := range []*discoveryv3.DeltaDiscoveryRequest{
				{TypeUrl: resourcev3.ClusterType, Node: node},
				{TypeUrl: resourcev3.ListenerType},
				// go-control-plane answers ADS for endpoints
				// only when every EDS cluster is asked for.
				{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"egress", "egress-2"}},
				{TypeUrl: resourcev3.RouteType, ResourceNamesSubscribe: []string{"r1"}},
			} {
				if err := stream.Send(r); err != nil {
					return err
				}
			}
			for {
				resp, err := stream.Recv()
				if err != nil {
					return err
				}
				e.mu.Lock()
				why := ""
				if e.reject != nil {
					why = e.reject(resp)
				}
				ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
				if why != "" {
					ack.ErrorDetail = &status.Status{Code: 3, Message: why}
				} else {
					set := e.resources[resp.GetTypeUrl()]
					if set == nil {
						set = map[string]*anypb.Any{}
						e.resources[resp.GetTypeUrl()] = set
					}
					for _, r := range resp.GetResources() {
						set[r.GetName()] = r.GetResource()
					}
					for _, n := range resp.GetRemovedResources() {
						delete(set, n)
						e.removed = append(e.removed, n)
					}
				}
				e.mu.Unlock()
				if err := stream.Send(ack); err != nil {
					return err
				}
			}
		}()
		e.mu.Lock()
		e.err = err
		e.mu.Unlock()
	}()
	return e
}

func (e *deltaEnvoy) has(typ, name string) *anypb.Any {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.resources[typ][name]
}

func (e *deltaEnvoy) count(typ string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.resources[typ])
}

// An Envoy on incremental ADS behind the proxy: configured from the one
// SotW upstream stream, told of removals, its NACK forwarded and not
// adopted by shunt.
func TestDeltaEnvoy(t *testing.T) {
	w := newWorld(t)
	w.up.setWith(t, "1", "240.0.0.1", []string{"egress", "egress-2"}, route("r1", "backend"))
	e := startDeltaEnvoy(t, w.sock, envoyNode(), func(r *discoveryv3.DeltaDiscoveryResponse) string {
		if r.GetTypeUrl() == resourcev3.ListenerType && r.GetSystemVersionInfo() == "3" {
			return "listener dns: unknown field"
		}
		return ""
	})
	eventually(t, 5*time.Second, "Envoy's configuration over delta", func() bool {
		return e.count(resourcev3.ClusterType) == 2 && e.has(resourcev3.ListenerType, "dns") != nil &&
			e.has(resourcev3.EndpointType, "egress") != nil && e.has(resourcev3.RouteType, "r1") != nil
	})
	var got routev3.RouteConfiguration
	if err := e.has(resourcev3.RouteType, "r1").UnmarshalTo(&got); err != nil || !proto.Equal(&got, route("r1", "backend")) {
		t.Errorf("route over delta = %v (%v), want it unchanged", &got, err)
	}
	eventually(t, 5*time.Second, "shunt's view", func() bool {
		s := w.client.Current()
		return s != nil && len(s.Names["httpbin.mesh"]) == 1 && s.Names["httpbin.mesh"][0].String() == "240.0.0.1"
	})

	// A cluster goes: Envoy is told so.
	w.up.setWith(t, "2", "240.0.0.2", []string{"egress"}, route("r1", "backend"))
	eventually(t, 5*time.Second, "the removal of egress-2", func() bool {
		return e.count(resourcev3.ClusterType) == 1 && e.has(resourcev3.ClusterType, "egress-2") == nil
	})
	eventually(t, 5*time.Second, "shunt's view of version 2", func() bool {
		s := w.client.Current()
		return s != nil && s.Names["httpbin.mesh"][0].String() == "240.0.0.2"
	})

	// Envoy rejects version 3's listeners: the NACK goes upstream, shunt
	// keeps version 2.
	w.up.setWith(t, "3", "240.0.0.3", []string{"egress"}, route("r1", "backend"))
	eventually(t, 5*time.Second, "the NACK upstream", func() bool {
		return w.up.find(func(r *discoveryv3.DiscoveryRequest) bool {
			return r.GetErrorDetail().GetMessage() == "listener dns: unknown field" && r.GetVersionInfo() == "2"
		}) != nil
	})
	time.Sleep(300 * time.Millisecond)
	if s := w.client.Current(); s.Names["httpbin.mesh"][0].String() != "240.0.0.2" {
		t.Errorf("shunt adopted the version Envoy rejected: %v", s.Names)
	}
	if streams, open := w.up.counts(); streams != 1 || open != 1 {
		t.Errorf("upstream streams: %d opened, %d open; want 1 and 1", streams, open)
	}
}

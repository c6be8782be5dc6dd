package xdsproxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dnstablev3 "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/xdsclient"
)

const nodeID = "pod-1"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// upstreamServer is go-control-plane's server over a snapshot cache: the
// management server a user may run. It counts the streams opened and
// records every request.
type upstreamServer struct {
	cache cachev3.SnapshotCache
	addr  string
	stop  func()

	mu       sync.Mutex
	streams  int
	open     int
	requests []*discoveryv3.DiscoveryRequest
	// deltaRequests are the incremental streams' requests, with the
	// stream each came on.
	deltaRequests []deltaRequest
	gen           int
}

// deltaRequest is a delta request with its stream: the server's
// generation (serve calls) and its id there.
type deltaRequest struct {
	stream int64
	gen    int
	req    *discoveryv3.DeltaDiscoveryRequest
}

func startUpstream(t *testing.T, addr string) *upstreamServer {
	t.Helper()
	s := &upstreamServer{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	s.serve(t, addr)
	return s
}

func (s *upstreamServer) serve(t *testing.T, addr string) {
	t.Helper()
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.mu.Unlock()
	cb := serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.streams++
			s.open++
			return nil
		},
		StreamClosedFunc: func(int64, *corev3.Node) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.open--
		},
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.streams++
			s.open++
			return nil
		},
		DeltaStreamClosedFunc: func(int64, *corev3.Node) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.open--
		},
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.deltaRequests = append(s.deltaRequests, deltaRequest{id, gen, req})
			return nil
		},
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.requests = append(s.requests, req)
			return nil
		},
	}
	xds := serverv3.NewServer(context.Background(), s.cache, cb)
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, xds)
	var lis net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			g.Stop()
			<-done
		})
	}
	t.Cleanup(s.stop)
}

func (s *upstreamServer) counts() (streams, open int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams, s.open
}

func (s *upstreamServer) find(match func(*discoveryv3.DiscoveryRequest) bool) *discoveryv3.DiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.requests {
		if match(r) {
			return r
		}
	}
	return nil
}

func (s *upstreamServer) set(t *testing.T, version string, vip string, routes ...types.Resource) {
	t.Helper()
	s.setWith(t, version, vip, []string{"egress"}, routes...)
}

// setWith serves a version whose EDS clusters are eds, each with one
// endpoint on 192.0.2.10, port 10002 onwards.
func (s *upstreamServer) setWith(t *testing.T, version string, vip string, eds []string, routes ...types.Resource) {
	t.Helper()
	var clusters, endpoints []types.Resource
	for i, n := range eds {
		clusters = append(clusters, edsCluster(n))
		endpoints = append(endpoints, assignment(n, "192.0.2.10", uint32(10002+i)))
	}
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {dnsListener(t, "httpbin.mesh", vip)},
		resourcev3.ClusterType:  clusters,
		resourcev3.EndpointType: endpoints,
		resourcev3.RouteType:    routes,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		t.Fatal(err)
	}
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
	}
}

func assignment(name, ip string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
			}}},
		}}}},
	}}}
}

func dnsListener(t *testing.T, name, vip string) *listenerv3.Listener {
	t.Helper()
	cfg := &dnsfilterv3.DnsFilterConfig{
		StatPrefix: "dns",
		ServerConfig: &dnsfilterv3.DnsFilterConfig_ServerContextConfig{
			ConfigSource: &dnsfilterv3.DnsFilterConfig_ServerContextConfig_InlineDnsTable{
				InlineDnsTable: &dnstablev3.DnsTable{VirtualDomains: []*dnstablev3.DnsTable_DnsVirtualDomain{{
					Name: name,
					Endpoint: &dnstablev3.DnsTable_DnsEndpoint{EndpointConfig: &dnstablev3.DnsTable_DnsEndpoint_AddressList{
						AddressList: &dnstablev3.DnsTable_AddressList{Address: []string{vip}},
					}},
				}}},
			},
		},
	}
	a, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name: "dns",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Protocol: corev3.SocketAddress_UDP, Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15054},
		}}},
		UdpListenerConfig: &listenerv3.UdpListenerConfig{},
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       xdsclient.DNSFilterName,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: a},
		}},
	}
}

// world is a proxy between an upstream server, shunt's own client and,
// when started, an "Envoy" on the socket.
type world struct {
	t      *testing.T
	up     *upstreamServer
	proxy  *Proxy
	client *xdsclient.Client
	sock   string
	ln     net.Listener
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	// Unix socket paths are limited to 107 bytes; t.TempDir() can be
	// longer.
	d, err := os.MkdirTemp("", "xp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newWorld(t *testing.T) *world {
	t.Helper()
	return newWorldAt(t, uint32(os.Getuid()), uint32(os.Getgid()))
}

// newWorldAt is newWorld with the socket given to uid:gid.
func newWorldAt(t *testing.T, uid, gid uint32) *world {
	t.Helper()
	return newWorldWith(t, uid, gid, false)
}

// newWorldWith is newWorldAt with, if delta, the upstream stream
// incremental.
func newWorldWith(t *testing.T, uid, gid uint32, delta bool) *world {
	t.Helper()
	w := &world{t: t, up: startUpstream(t, "127.0.0.1:0"), sock: SocketPath(shortTempDir(t))}
	w.up.set(t, "1", "240.0.0.1")
	upCfg := xdsclient.Config{Server: w.up.addr, NodeID: nodeID}
	cfg := Config{
		Server: w.up.addr, NodeID: nodeID, Logger: quiet(),
		Backoff: xdsclient.BackoffConfig{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	}
	if delta {
		cfg.DeltaUpstream = func(ctx context.Context) (xdsclient.DeltaADSStream, error) {
			return xdsclient.OpenDeltaStream(ctx, upCfg)
		}
	} else {
		cfg.Upstream = func(ctx context.Context) (xdsclient.ADSStream, error) { return xdsclient.OpenStream(ctx, upCfg) }
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.proxy = p
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := Listen(w.sock, uid, gid, quiet())
	if err != nil {
		t.Fatal(err)
	}
	w.ln = ln
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	go func() {
		defer wg.Done()
		if err := p.Serve(ctx, ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	c, err := xdsclient.New(xdsclient.Config{Server: "xds-proxy", NodeID: nodeID, Stream: p.LocalStream, Logger: quiet(),
		Backoff: xdsclient.BackoffConfig{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	w.client = c
	wg.Add(1)
	go func() { defer wg.Done(); _ = c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return w
}

// names is the VIP shunt's client answers httpbin.mesh with, "" if none.
func (w *world) shuntVIP() string {
	s := w.client.Current()
	if s == nil || len(s.Names["httpbin.mesh"]) == 0 {
		return ""
	}
	// The EDS cluster's endpoint is part of the view.
	if len(s.AllowedEndpoints) != 1 || s.AllowedEndpoints[0].String() != "192.0.2.10:10002" {
		return "no endpoints"
	}
	return s.Names["httpbin.mesh"][0].String()
}

// envoy is a stand-in for Envoy's ADS client, speaking the real protocol
// over the socket: it subscribes to clusters, listeners and route r1,
// answers every response with an ACK, or a NACK where reject says so, and
// keeps what it accepted.
type envoy struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	node   *corev3.Node

	mu       sync.Mutex
	accepted map[string]*discoveryv3.DiscoveryResponse
	received []*discoveryv3.DiscoveryResponse
	edsNonce string
	reject   func(*discoveryv3.DiscoveryResponse) string
}

func envoyNode() *corev3.Node {
	return &corev3.Node{Id: nodeID, UserAgentName: "envoy", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		"kuma.io/mesh": structpb.NewStringValue(mesh.DefaultMesh),
	}}}
}

func startEnvoy(t *testing.T, sock string, node *corev3.Node, reject func(*discoveryv3.DiscoveryResponse) string) *envoy {
	t.Helper()
	e := &envoy{t: t, done: make(chan error, 1), node: node, accepted: map[string]*discoveryv3.DiscoveryResponse{}, reject: reject}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = func() {
		cancel()
		conn.Close()
	}
	t.Cleanup(e.cancel)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() { e.done <- e.run(stream) }()
	return e
}

func (e *envoy) run(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient) error {
	subs := []*discoveryv3.DiscoveryRequest{
		{TypeUrl: resourcev3.ClusterType, Node: e.node},
		{TypeUrl: resourcev3.ListenerType},
		{TypeUrl: resourcev3.RouteType, ResourceNames: []string{"r1"}},
		// As Envoy does, the endpoints of the EDS cluster are asked for
		// before the clusters are ACKed.
		{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"egress"}},
	}
	for _, r := range subs {
		if err := stream.Send(r); err != nil {
			// The stream's status comes with Recv.
			_, err = stream.Recv()
			return err
		}
	}
	names := map[string][]string{resourcev3.RouteType: {"r1"}, resourcev3.EndpointType: {"egress"}}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		e.mu.Lock()
		e.received = append(e.received, resp)
		why := ""
		if e.reject != nil {
			why = e.reject(resp)
		}
		var follow *discoveryv3.DiscoveryRequest
		if resp.GetTypeUrl() == resourcev3.ClusterType && why == "" {
			// Envoy asks for the endpoints of new EDS clusters while
			// it takes the clusters in, before it ACKs them.
			var eds []string
			for _, a := range resp.GetResources() {
				var c clusterv3.Cluster
				if a.UnmarshalTo(&c) == nil && c.GetType() == clusterv3.Cluster_EDS {
					eds = append(eds, c.GetName())
				}
			}
			if !slices.Equal(eds, names[resourcev3.EndpointType]) {
				names[resourcev3.EndpointType] = eds
				follow = &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: eds,
					VersionInfo: e.accepted[resourcev3.EndpointType].GetVersionInfo(), ResponseNonce: e.edsNonce}
			}
		}
		if resp.GetTypeUrl() == resourcev3.EndpointType {
			e.edsNonce = resp.GetNonce()
		}
		req := &discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce(), ResourceNames: names[resp.GetTypeUrl()]}
		if why == "" {
			e.accepted[resp.GetTypeUrl()] = resp
			req.VersionInfo = resp.GetVersionInfo()
		} else {
			req.VersionInfo = e.accepted[resp.GetTypeUrl()].GetVersionInfo()
			req.ErrorDetail = &status.Status{Code: 3, Message: why}
		}
		e.mu.Unlock()
		if follow != nil {
			if err := stream.Send(follow); err != nil {
				return err
			}
		}
		if err := stream.Send(req); err != nil {
			return err
		}
	}
}

func (e *envoy) version(typ string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.accepted[typ].GetVersionInfo()
}

func (e *envoy) receivedCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.received)
}

func (e *envoy) lastAccepted(typ string) *discoveryv3.DiscoveryResponse {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.accepted[typ]
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func route(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
		}},
	}}}
}

// One stream upstream whoever is connected; Envoy gets the responses
// unchanged, types shunt does not read included; shunt takes its view from
// the same responses.
func TestOneUpstreamStreamForEnvoyAndShunt(t *testing.T) {
	w := newWorld(t)
	w.up.set(t, "1", "240.0.0.1", route("r1", "backend"))
	// Direct mode first: shunt alone.
	eventually(t, 5*time.Second, "shunt's view in direct mode", func() bool { return w.shuntVIP() == "240.0.0.1" })

	e := startEnvoy(t, w.sock, envoyNode(), nil)
	eventually(t, 5*time.Second, "Envoy's configuration", func() bool {
		return e.version(resourcev3.ListenerType) == "1" && e.version(resourcev3.ClusterType) == "1" && e.version(resourcev3.RouteType) == "1"
	})
	// The route passes through untouched.
	var got routev3.RouteConfiguration
	if err := e.lastAccepted(resourcev3.RouteType).GetResources()[0].UnmarshalTo(&got); err != nil || !proto.Equal(&got, route("r1", "backend")) {
		t.Errorf("route through the proxy = %v (%v), want it unchanged", &got, err)
	}
	// The stream shunt opened carries Envoy's subscriptions too: never
	// reopened (kuma-cp would refuse the node for 10 s), one node.
	if streams, open := w.up.counts(); streams != 1 || open != 1 {
		t.Errorf("upstream streams: %d opened, %d open; want 1 and 1", streams, open)
	}
	if r := w.up.find(func(r *discoveryv3.DiscoveryRequest) bool { return r.GetNode().GetUserAgentName() == "envoy" }); r != nil {
		t.Error("a second node went upstream")
	}
	if st := w.proxy.Status(); st.Reconnects != 0 || !st.Connected || !st.EnvoyConnected {
		t.Errorf("status with Envoy = %+v, want connected, Envoy connected, no reconnect", st)
	}

	w.up.set(t, "2", "240.0.0.2", route("r1", "backend-2"))
	eventually(t, 5*time.Second, "version 2 at Envoy and shunt", func() bool {
		return e.version(resourcev3.RouteType) == "2" && w.shuntVIP() == "240.0.0.2"
	})
	if streams, open := w.up.counts(); streams != 1 || open != 1 {
		t.Errorf("upstream streams after an update: %d opened, %d open; want 1 and 1", streams, open)
	}
	// Envoy's ACKs reached the upstream.
	eventually(t, 5*time.Second, "Envoy's ACK of route version 2 upstream", func() bool {
		return w.up.find(func(r *discoveryv3.DiscoveryRequest) bool {
			return r.GetTypeUrl() == resourcev3.RouteType && r.GetVersionInfo() == "2" && r.GetResponseNonce() != ""
		}) != nil
	})
}

// A new EDS cluster: Envoy asks for its endpoints before it ACKs the
// clusters, so shunt's client is handed the endpoints before the clusters
// that name them; its own request for them must still be answered, or its
// view would wait for them forever.
func TestNewEDSClusterBehindEnvoy(t *testing.T) {
	w := newWorld(t)
	e := startEnvoy(t, w.sock, envoyNode(), nil)
	eventually(t, 5*time.Second, "version 1", func() bool {
		return e.version(resourcev3.ClusterType) == "1" && w.shuntVIP() == "240.0.0.1"
	})
	w.up.setWith(t, "2", "240.0.0.2", []string{"egress", "egress-2"})
	eventually(t, 5*time.Second, "shunt's view of version 2 with both clusters' endpoints", func() bool {
		s := w.client.Current()
		return s != nil && len(s.Names["httpbin.mesh"]) == 1 && s.Names["httpbin.mesh"][0].String() == "240.0.0.2" && len(s.AllowedEndpoints) == 2
	})
}

// Envoy's NACK goes upstream and shunt does not adopt the version either,
// though shunt itself could read it.
func TestEnvoyNACKIsForwardedAndNotAdopted(t *testing.T) {
	w := newWorld(t)
	e := startEnvoy(t, w.sock, envoyNode(), func(r *discoveryv3.DiscoveryResponse) string {
		if r.GetTypeUrl() == resourcev3.ListenerType && r.GetVersionInfo() == "2" {
			return "listener dns: unknown field"
		}
		return ""
	})
	eventually(t, 5*time.Second, "version 1 at Envoy and shunt", func() bool {
		return e.version(resourcev3.ListenerType) == "1" && w.shuntVIP() == "240.0.0.1"
	})
	w.up.set(t, "2", "240.0.0.2")
	eventually(t, 5*time.Second, "the NACK upstream", func() bool {
		return w.up.find(func(r *discoveryv3.DiscoveryRequest) bool {
			return r.GetErrorDetail().GetMessage() == "listener dns: unknown field" && r.GetVersionInfo() == "1"
		}) != nil
	})
	time.Sleep(300 * time.Millisecond)
	if v := w.shuntVIP(); v != "240.0.0.1" {
		t.Fatalf("shunt answers %q after Envoy rejected version 2, want the accepted 240.0.0.1", v)
	}
	if st := w.proxy.Status(); st.LastEnvoyNACK != "listener dns: unknown field" {
		t.Errorf("status = %+v, want the NACK recorded", st)
	}
	w.up.set(t, "3", "240.0.0.3")
	eventually(t, 5*time.Second, "version 3 at shunt", func() bool { return w.shuntVIP() == "240.0.0.3" })
}

// A reconnecting Envoy gets the configuration at once from the proxy, which
// keeps its one upstream stream; with the upstream down too.
func TestEnvoyReconnectIsReplayed(t *testing.T) {
	w := newWorld(t)
	w.up.set(t, "1", "240.0.0.1", route("r1", "backend"))
	e := startEnvoy(t, w.sock, envoyNode(), nil)
	eventually(t, 5*time.Second, "Envoy's configuration", func() bool { return e.version(resourcev3.RouteType) == "1" })
	streams, _ := w.up.counts()
	e.cancel()
	<-e.done

	e2 := startEnvoy(t, w.sock, envoyNode(), nil)
	eventually(t, 2*time.Second, "the replay", func() bool {
		return e2.version(resourcev3.ListenerType) == "1" && e2.version(resourcev3.ClusterType) == "1" && e2.version(resourcev3.RouteType) == "1"
	})
	time.Sleep(200 * time.Millisecond)
	if s, open := w.up.counts(); s != streams || open != 1 {
		t.Errorf("upstream streams after Envoy reconnected: %d opened (%d before), %d open; want no new one", s, streams, open)
	}

	// Upstream gone: Envoy's stream stays, shunt keeps its view, and a
	// restarted Envoy is still served what the proxy holds.
	w.up.stop()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-e2.done:
		t.Fatalf("Envoy's stream ended with the upstream: %v", err)
	default:
	}
	if v := w.shuntVIP(); v != "240.0.0.1" {
		t.Errorf("shunt answers %q during the outage, want 240.0.0.1", v)
	}
	e2.cancel()
	e3 := startEnvoy(t, w.sock, envoyNode(), nil)
	eventually(t, 2*time.Second, "the replay during the outage", func() bool {
		return e3.version(resourcev3.ListenerType) == "1" && e3.version(resourcev3.RouteType) == "1"
	})

	// The upstream returns on the same address, with a new version.
	addr := w.up.addr
	w.up.serve(t, addr)
	w.up.set(t, "2", "240.0.0.2", route("r1", "backend-2"))
	eventually(t, 5*time.Second, "version 2 after the outage", func() bool {
		return e3.version(resourcev3.RouteType) == "2" && w.shuntVIP() == "240.0.0.2"
	})
	if _, open := w.up.counts(); open != 1 {
		t.Errorf("%d upstream streams open after the outage, want 1", open)
	}
	if st := w.proxy.Status(); st.Reconnects < 1 || !st.Connected {
		t.Errorf("status after the outage = %+v, want connected again, reconnects counted", st)
	}
}

// A downstream naming another node is refused: the socket serves this
// node's configuration only.
func TestOtherNodeRefused(t *testing.T) {
	w := newWorld(t)
	n := envoyNode()
	n.Id = "someone-else"
	e := startEnvoy(t, w.sock, n, nil)
	select {
	case err := <-e.done:
		if err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
			t.Errorf("stream for another node ended with %v, want PermissionDenied", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stream for another node was not refused")
	}
	if n := e.receivedCount(); n != 0 {
		t.Errorf("another node received %d responses", n)
	}
}

package controlplane

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

const tcpService = `type: ExternalService
mesh: default
name: %s
tags:
  kuma.io/service: %s
  kuma.io/protocol: tcp
networking:
  address: %s.example.com:443
`

func esYAML(name string) string {
	return strings.ReplaceAll(tcpService, "%s", name)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	// Write beside and rename, as editors and ConfigMap updates do, so the
	// watcher never reads half a file.
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type testServer struct {
	srv  *Server
	addr string
	dir  string
	stop func()
}

func startServer(t *testing.T, dir, stateDir string) *testServer {
	t.Helper()
	srv, err := New(Options{ResourcesDir: dir, StateDir: stateDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	ts := &testServer{srv: srv, addr: lis.Addr().String(), dir: dir}
	ts.stop = func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancellation")
		}
	}
	t.Cleanup(ts.stop)
	return ts
}

// adsClient is a bare ADS client over a real gRPC connection, the way a
// proxy or shunt's agent talks to the control plane.
type adsClient struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *core.Node
	recv   chan *discovery.DiscoveryResponse
}

func dial(t *testing.T, addr string, node *core.Node) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{t: t, stream: stream, node: node, recv: make(chan *discovery.DiscoveryResponse, 16)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(c.recv)
				return
			}
			c.recv <- r
		}
	}()
	return c
}

func (c *adsClient) send(req *discovery.DiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func (c *adsClient) subscribe(typeURL string) {
	c.send(&discovery.DiscoveryRequest{TypeUrl: typeURL})
}

func (c *adsClient) ack(r *discovery.DiscoveryResponse) {
	c.send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
}

func (c *adsClient) nack(r *discovery.DiscoveryResponse, prevVersion, msg string) {
	c.send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: prevVersion, ResponseNonce: r.GetNonce(), ErrorDetail: &status.Status{Code: 3, Message: msg}})
}

func (c *adsClient) next(within time.Duration) *discovery.DiscoveryResponse {
	c.t.Helper()
	select {
	case r, ok := <-c.recv:
		if !ok {
			c.t.Fatal("stream closed")
		}
		return r
	case <-time.After(within):
		c.t.Fatalf("no response within %v", within)
		return nil
	}
}

// push reads the listener and cluster responses of one new version, in
// whichever order they come, and ACKs both.
func (c *adsClient) push(within time.Duration) (lds, cds *discovery.DiscoveryResponse) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for lds == nil || cds == nil {
		r := c.next(time.Until(deadline))
		switch r.GetTypeUrl() {
		case resource.ListenerType:
			lds = r
		case resource.ClusterType:
			cds = r
		}
		c.ack(r)
	}
	if lds.GetVersionInfo() != cds.GetVersionInfo() {
		c.t.Errorf("listeners at %s, clusters at %s", lds.GetVersionInfo(), cds.GetVersionInfo())
	}
	return lds, cds
}

func (c *adsClient) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.recv:
		c.t.Fatalf("unexpected push of version %s", r.GetVersionInfo())
	case <-time.After(d):
	}
}

func namesIn(t *testing.T, r *discovery.DiscoveryResponse) map[string][]string {
	t.Helper()
	var ls []types.Resource
	for _, a := range r.GetResources() {
		var l listener.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, &l)
	}
	return dnsTable(t, Resources{Listeners: ls})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestADSPushesChangesAndKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), esYAML("alpha"))
	ts := startServer(t, dir, t.TempDir())

	c := dial(t, ts.addr, &core.Node{Id: "node-1", Locality: &core.Locality{Zone: "zone-1"}})
	c.subscribe(resource.ListenerType)
	r1 := c.next(2 * time.Second)
	if r1.GetVersionInfo() != ts.srv.Version() {
		t.Errorf("version %q, server says %q", r1.GetVersionInfo(), ts.srv.Version())
	}
	if names := namesIn(t, r1); len(names["alpha.mesh"]) == 0 || len(names["alpha.example.com"]) == 0 {
		t.Fatalf("names missing: %v", names)
	}
	c.ack(r1)
	c.subscribe(resource.ClusterType)
	rc := c.next(2 * time.Second)
	c.ack(rc)
	waitFor(t, "ACK recorded", func() bool {
		n := ts.srv.Nodes()
		return len(n) == 1 && n[0].ID == "node-1" && n[0].Zone == "zone-1" &&
			n[0].Acked[resource.ListenerType] == r1.GetVersionInfo() && n[0].Acked[resource.ClusterType] == r1.GetVersionInfo()
	})

	// A new file reaches the node within a second.
	start := time.Now()
	writeFile(t, filepath.Join(dir, "b.yaml"), esYAML("beta"))
	r2, _ := c.push(time.Second)
	if took := time.Since(start); took > time.Second {
		t.Errorf("push took %v", took)
	}
	if r2.GetVersionInfo() == r1.GetVersionInfo() {
		t.Error("version unchanged after a change")
	}
	if names := namesIn(t, r2); len(names["beta.mesh"]) == 0 || len(names["alpha.mesh"]) == 0 {
		t.Errorf("names after change: %v", names)
	}
	good := ts.srv.Version()
	vips := ts.srv.VIPs()

	// A broken file changes nothing: no push, same version, same VIPs.
	writeFile(t, filepath.Join(dir, "b.yaml"), "type: ExternalService\nname: beta\ntags:\n  kuma.io/service: beta\nnetworking:\n  address: beta.example.com\n")
	c.quiet(1200 * time.Millisecond)
	if ts.srv.Version() != good {
		t.Error("version changed after a broken file")
	}
	if ts.srv.Reload() == nil {
		t.Error("Reload accepted a broken file")
	}
	if got := ts.srv.VIPs(); got.V4["beta.mesh"] != vips.V4["beta.mesh"] {
		t.Error("VIPs changed after a broken file")
	}

	// Fixing it pushes again; VIPs of names that stayed do not move.
	writeFile(t, filepath.Join(dir, "b.yaml"), esYAML("beta")+"---\n"+esYAML("gamma"))
	var r3 *discovery.DiscoveryResponse
	for r3 == nil {
		if r := c.next(time.Second); r.GetTypeUrl() == resource.ListenerType {
			r3 = r
		}
	}
	names := namesIn(t, r3)
	if len(names["gamma.mesh"]) == 0 {
		t.Errorf("gamma missing: %v", names)
	}
	if names["alpha.mesh"][0] != vips.V4["alpha.mesh"].String() {
		t.Errorf("alpha.mesh moved: %v vs %v", names["alpha.mesh"], vips.V4["alpha.mesh"])
	}

	// A NACK is recorded and the node keeps the version it had.
	c.nack(r3, r2.GetVersionInfo(), "listener rejected")
	waitFor(t, "NACK recorded", func() bool {
		n := ts.srv.Nodes()
		return len(n) == 1 && n[0].Nacked[resource.ListenerType] == "listener rejected" && n[0].Acked[resource.ListenerType] == r2.GetVersionInfo()
	})
}

func TestADSPerZoneSnapshots(t *testing.T) {
	ts := startServer(t, "testdata/zones/universal", "")
	zone2, _ := structpb.NewStruct(map[string]any{NodeMetadataZone: "zone-2"})
	cases := []struct {
		node      *core.Node
		want, not string
	}{
		{&core.Node{Id: "a", Locality: &core.Locality{Zone: "zone-1"}}, "zone-1.httpbin.org", "zone-2.httpbin.org"},
		{&core.Node{Id: "b", Metadata: zone2}, "zone-2.httpbin.org", "zone-1.httpbin.org"},
	}
	for _, c := range cases {
		cl := dial(t, ts.addr, c.node)
		cl.subscribe(resource.ListenerType)
		names := namesIn(t, cl.next(2*time.Second))
		if _, ok := names[c.want]; !ok {
			t.Errorf("node %s: %s missing from %v", c.node.GetId(), c.want, names)
		}
		if _, ok := names[c.not]; ok {
			t.Errorf("node %s: resolves %s", c.node.GetId(), c.not)
		}
		if _, ok := names["httpbin.mesh"]; !ok {
			t.Errorf("node %s: httpbin.mesh missing", c.node.GetId())
		}
	}
	waitFor(t, "both nodes registered", func() bool { return len(ts.srv.Nodes()) == 2 })
}

func TestADSDelta(t *testing.T) {
	ts := startServer(t, "testdata/tcp/universal", "")
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "delta-1"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range resp.GetResources() {
		got[r.GetName()] = true
	}
	if !got[DNSListenerName] || !got["outbound:httpbin-tls.mesh:80"] {
		t.Errorf("delta resources: %v", got)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "delta ACK", func() bool {
		n := ts.srv.Nodes()
		return len(n) == 1 && n[0].Acked[resource.ListenerType] == ts.srv.Version()
	})
}

// A restart with the same state keeps VIPs and version, so proxies that
// reconnect see nothing new.
func TestRestartKeepsVIPsAndVersion(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), esYAML("alpha"))
	s1, err := New(Options{ResourcesDir: dir, StateDir: state, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := New(Options{ResourcesDir: dir, StateDir: state, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if s1.Version() != s2.Version() || s1.VIPs().V4["alpha.mesh"] != s2.VIPs().V4["alpha.mesh"] {
		t.Errorf("restart changed version or VIPs: %s/%s", s1.Version(), s2.Version())
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); err != nil {
		t.Errorf("state not persisted: %v", err)
	}
	// A corrupt state file is refused rather than silently reassigning.
	if err := os.WriteFile(filepath.Join(state, stateFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{ResourcesDir: dir, StateDir: state}); err == nil {
		t.Error("corrupt state accepted")
	}
}

func TestNewRefusesInvalidResources(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), "type: ExternalService\nname: a\n")
	_, err := New(Options{ResourcesDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "a.yaml: document 1") {
		t.Errorf("error %v does not point at the file", err)
	}
	if _, err := New(Options{ResourcesDir: filepath.Join(dir, "missing")}); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing directory: %v", err)
	}
}

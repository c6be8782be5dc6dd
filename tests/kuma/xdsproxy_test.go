package kuma_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shunt-dev/shunt/nodemeta"
	"github.com/shunt-dev/shunt/tests/kumacp"
	"github.com/shunt-dev/shunt/xdsclient"
	"github.com/shunt-dev/shunt/xdsproxy"
)

// adsDouble is Envoy's side of ADS over shunt's socket: it subscribes to
// clusters and listeners, then to the endpoints the clusters name, and ACKs
// every response.
type adsDouble struct {
	mu       sync.Mutex
	versions map[string]string
	err      error
}

func (d *adsDouble) version(typ string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.versions[typ]
}

func runADSDouble(t *testing.T, sock string, node *corev3.Node) *adsDouble {
	t.Helper()
	d := &adsDouble{versions: map[string]string{}}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		err := func() error {
			if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node}); err != nil {
				return err
			}
			if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType}); err != nil {
				return err
			}
			var eds []string
			for {
				resp, err := stream.Recv()
				if err != nil {
					return err
				}
				req := &discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
				if resp.GetTypeUrl() == resourcev3.EndpointType {
					req.ResourceNames = eds
				}
				if err := stream.Send(req); err != nil {
					return err
				}
				d.mu.Lock()
				d.versions[resp.GetTypeUrl()] = resp.GetVersionInfo()
				d.mu.Unlock()
			}
		}()
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
	}()
	return d
}

// The real kuma-cp refuses a second stream for a node. Behind shunt's xDS
// proxy, shunt and the node's Envoy share one: both are configured, and
// kuma-cp refuses nothing.
func TestOneStreamToKumaCPThroughTheProxy(t *testing.T) {
	cp := kumacp.Start(t, kumacp.Options{})
	cp.Put("/meshes/default", seedMesh(true))
	cp.Put("/meshes/default/external-services/httpbin", externalService("httpbin", "httpbin.org:443"))

	dp := dataplane(t, "px-1")
	md, err := nodemeta.Build(*buildMeta(t, nil, dp))
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := xdsclient.TLSConfig(cp.CAFile(), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	nodeID := dp.NodeID()
	upCfg := xdsclient.Config{Server: kumacp.XDSAddr, Dialer: cp.Dial, TLS: tlsCfg, NodeID: nodeID}
	p, err := xdsproxy.New(xdsproxy.Config{
		Upstream: func(ctx context.Context) (xdsclient.ADSStream, error) { return xdsclient.OpenStream(ctx, upCfg) },
		Server:   kumacp.XDSAddr, NodeID: nodeID,
	})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "kxp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := xdsproxy.SocketPath(dir)
	ln, err := xdsproxy.Listen(sock, uint32(os.Getuid()), uint32(os.Getgid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(2)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	go func() { defer wg.Done(); _ = p.Serve(ctx, ln) }()

	client, err := xdsclient.New(xdsclient.Config{Server: "xds-proxy", NodeID: nodeID, Metadata: md, Stream: p.LocalStream,
		StateDir: filepath.Join(dir, "agent")})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = client.Run(ctx) }()

	resolves := func() bool {
		s := client.Current()
		return s != nil && len(s.Names["httpbin.mesh"]) > 0 && len(s.Names["httpbin.org"]) > 0
	}
	// shunt alone first (direct mode), as when Envoy starts after it.
	deadline := time.Now().Add(30 * time.Second)
	for !resolves() {
		if time.Now().After(deadline) {
			t.Fatalf("shunt alone not configured: %+v, proxy %+v\nkuma-cp log:\n%s", client.Current(), p.Status(), cp.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Envoy's node is the one its bootstrap gives: the same id and
	// metadata.
	envoy := runADSDouble(t, sock, &corev3.Node{Id: nodeID, Metadata: md, UserAgentName: "envoy"})
	deadline = time.Now().Add(30 * time.Second)
	for !(resolves() && envoy.version(resourcev3.ListenerType) != "" && envoy.version(resourcev3.ClusterType) != "") {
		if time.Now().After(deadline) {
			t.Fatalf("not configured: shunt %+v, Envoy LDS %q CDS %q (err %v), proxy %+v\nkuma-cp log:\n%s",
				client.Current(), envoy.version(resourcev3.ListenerType), envoy.version(resourcev3.ClusterType), envoy.err, p.Status(), cp.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	if log := cp.Log(); strings.Contains(log, "already an active stream") {
		t.Errorf("kuma-cp refused a stream:\n%s", log)
	}
	if st := p.Status(); !st.Connected || !st.EnvoyConnected || st.Reconnects != 0 {
		t.Errorf("proxy status %+v, want connected with Envoy, no reconnect", st)
	}
}

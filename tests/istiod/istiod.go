// Package istiod runs the real istiod (pilot-discovery, from
// ../shared/tools/istiod-pilot-discovery-eed52ebb66ad.xz, or $ISTIOD) for
// tests, without Kubernetes: its configuration is ServiceEntry files in a
// directory, its plaintext xDS on 127.0.0.1:15010, inside a network
// namespace of the test's own that has nothing but lo.
package istiod

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/shunt-dev/shunt/tests/peers"
	"github.com/shunt-dev/shunt/tests/testenv"
	"github.com/shunt-dev/shunt/wire"
)

// Version is the istio.io/istio commit the tests were written against.
const Version = "eed52ebb66ad"

// XDSAddr is istiod's plaintext xDS inside its namespace.
const XDSAddr = "127.0.0.1:15010"

// Binary returns a pilot-discovery executable: $ISTIOD, or the shared build
// decompressed into a temporary directory. It skips the test when neither
// exists (a clone without ../shared).
func Binary(t testing.TB) string {
	t.Helper()
	return peers.Binary(t, "istiod", "ISTIOD", "istiod-pilot-discovery-"+Version+".xz", "pilot-discovery")
}

// meshConfig is a Kubernetes-free mesh: configuration from files only, and
// the proxy metadata that asks for DNS capture and VIP allocation.
const meshConfig = `configSources:
- address: fs://%s
defaultConfig:
  discoveryAddress: 127.0.0.1:15012
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: "true"
    ISTIO_META_DNS_AUTO_ALLOCATE: "true"
ingressControllerMode: "OFF"
enableAutoMtls: true
trustDomain: cluster.local
rootNamespace: istio-system
`

// CP is a running istiod.
type CP struct {
	peers.Peer
	t testing.TB
	// ConfigDir holds the ServiceEntry files istiod watches.
	ConfigDir string
	proc      *testenv.Process
}

// Start runs istiod in a namespace of its own and waits until its xDS port
// listens.
func Start(t testing.TB) *CP {
	t.Helper()
	bin := Binary(t)
	ns := testenv.NewNetns(t, "istiod")
	dir := t.TempDir()
	cp := &CP{Peer: peers.Peer{Ns: ns}, t: t, ConfigDir: filepath.Join(dir, "config")}
	// istiod looks for ./etc/cacerts and ./var/run/secrets under its
	// working directory.
	run := filepath.Join(dir, "run")
	for _, d := range []string{cp.ConfigDir, run} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	meshFile := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(meshFile, fmt.Appendf(nil, meshConfig, cp.ConfigDir), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(context.Background(), bin, "discovery", "--meshConfig", meshFile, "--registries=",
		"--domain", "cluster.local", "--grpcAddr", XDSAddr, "--httpAddr", "127.0.0.1:8080",
		"--monitoringAddr", "127.0.0.1:15014", "--secureGRPCAddr", "127.0.0.1:15012",
		"--httpsAddr", "127.0.0.1:15017", "--ctrlz_address", "127.0.0.1", "--shutdownDuration", "1s")
	cmd.Dir = run
	cmd.Env = append(os.Environ(), "POD_NAMESPACE=istio-system", "POD_NAME=istiod-local", "REVISION=default",
		// The newer allocator needs Kubernetes; this one gives
		// ServiceEntries without addresses a VIP from 240.240.0.0/16.
		"PILOT_ENABLE_IP_AUTOALLOCATE=false")
	cp.proc = ns.Start(cmd)
	peers.LogOnFailure(t, "istiod", cp.proc.Output)
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := cp.Dial(context.Background(), XDSAddr)
		if err == nil {
			c.Close()
			return cp
		}
		if cp.proc.Exited() || time.Now().After(deadline) {
			t.Fatalf("istiod did not start: %v\n%s", err, peers.Tail(cp.proc.Output(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Log is what istiod printed so far.
func (cp *CP) Log() string { return cp.proc.Output() }

// ServiceEntry writes a ServiceEntry file for host (port 80 HTTP, DNS
// resolution, no addresses: istiod allocates its VIP) in namespace
// default. It is written under another name and renamed, so that istiod
// never reads half of it.
func (cp *CP) ServiceEntry(name, host string) {
	cp.t.Helper()
	doc := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: %s
  namespace: default
spec:
  hosts:
  - %s
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - number: 80
    name: http
    protocol: HTTP
`, name, host)
	cp.WriteConfig(name, doc)
}

// WriteConfig writes an Istio configuration document as file name.yaml of
// the config directory.
func (cp *CP) WriteConfig(name, doc string) {
	cp.t.Helper()
	tmp := filepath.Join(filepath.Dir(cp.ConfigDir), name+".yaml.tmp")
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		cp.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(cp.ConfigDir, name+".yaml")); err != nil {
		cp.t.Fatal(err)
	}
}

// NodeMetadata is what pilot-agent sends for DNS capture, without the
// ISTIO_META_ prefix.
func NodeMetadata() *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		wire.IstioDNSCapture:      structpb.NewStringValue("true"),
		wire.IstioDNSAutoAllocate: structpb.NewStringValue("true"),
	}}
}

// NodeID is a sidecar's node id for the pod name in namespace default.
func NodeID(ip, pod string) string {
	return "sidecar~" + ip + "~" + pod + ".default~default.svc.cluster.local"
}

// Watch subscribes to istiod's NDS as node nodeID and sends every
// NameTable response it ACKs on the returned channel, until ctx ends.
func (cp *CP) Watch(ctx context.Context, nodeID string) (<-chan *discoveryv3.DiscoveryResponse, error) {
	conn, err := grpc.NewClient("passthrough:///"+XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(cp.Dial), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { conn.Close() })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	node := &corev3.Node{Id: nodeID, Metadata: NodeMetadata(), UserAgentName: "shunt-recorder"}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: wire.IstioNameTableType}); err != nil {
		return nil, err
	}
	ch := make(chan *discoveryv3.DiscoveryResponse, 16)
	go func() {
		defer close(ch)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
				return
			}
			select {
			case ch <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// RemoveConfig deletes the file WriteConfig or ServiceEntry wrote.
func (cp *CP) RemoveConfig(name string) {
	cp.t.Helper()
	if err := os.Remove(filepath.Join(cp.ConfigDir, name+".yaml")); err != nil {
		cp.t.Fatal(err)
	}
}

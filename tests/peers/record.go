package peers

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Recording is the last response of each type a node got, as the peer
// sent it.
type Recording struct {
	Listeners, Clusters, Endpoints *discoveryv3.DiscoveryResponse
	// Others holds the responses of RecordOptions.Types, by type URL.
	Others map[string]*discoveryv3.DiscoveryResponse
}

// RecordOptions say who the recording node is and what it subscribes to.
type RecordOptions struct {
	NodeID   string
	Metadata *structpb.Struct
	// TLS is the stream's TLS; nil is plaintext.
	TLS *tls.Config
	// Token, when set, is sent raw as authorization, as kuma-dp does.
	Token string
	// Types are subscribed to after listeners and clusters (Istio's
	// NameTable); the recording waits for each of them.
	Types []string
	// Quiet is how long no response must come before the recording is
	// complete (default 2 s).
	Quiet time.Duration
}

// Record subscribes over ADS at addr (reached with dial) to listeners,
// clusters, o.Types and the endpoints the clusters name, ACKs everything,
// and returns once the peer has been quiet for o.Quiet with all of them
// answered.
func Record(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr string, o RecordOptions) (*Recording, error) {
	if o.Quiet == 0 {
		o.Quiet = 2 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", o.Token)
	}
	creds := insecure.NewCredentials()
	if o.TLS != nil {
		creds = credentials.NewTLS(o.TLS)
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(dial), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	node := &corev3.Node{Id: o.NodeID, Metadata: o.Metadata, UserAgentName: "shunt-recorder"}
	for i, typ := range append([]string{resourcev3.ListenerType, resourcev3.ClusterType}, o.Types...) {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: typ}
		if i == 0 {
			req.Node = node
		}
		if err := stream.Send(req); err != nil {
			return nil, err
		}
	}
	type recv struct {
		r   *discoveryv3.DiscoveryResponse
		err error
	}
	ch := make(chan recv)
	go func() {
		for {
			r, err := stream.Recv()
			select {
			case ch <- recv{r, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	rec := &Recording{Others: map[string]*discoveryv3.DiscoveryResponse{}}
	complete := func(edsNames []string) bool {
		for _, typ := range o.Types {
			if rec.Others[typ] == nil {
				return false
			}
		}
		return rec.Listeners != nil && rec.Clusters != nil && (len(edsNames) == 0 || rec.Endpoints != nil)
	}
	var edsNames []string
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			if complete(edsNames) {
				return rec, nil
			}
			timer.Reset(o.Quiet)
		case x := <-ch:
			if x.err != nil {
				return nil, fmt.Errorf("receive: %w", x.err)
			}
			r := x.r
			ack := &discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}
			switch typ := r.GetTypeUrl(); {
			case typ == resourcev3.ListenerType:
				rec.Listeners = r
			case typ == resourcev3.ClusterType:
				rec.Clusters = r
			case typ == resourcev3.EndpointType:
				rec.Endpoints = r
				ack.ResourceNames = edsNames
			case slices.Contains(o.Types, typ):
				rec.Others[typ] = r
			default:
				return nil, fmt.Errorf("unexpected response type %s", typ)
			}
			if err := stream.Send(ack); err != nil {
				return nil, err
			}
			if r.GetTypeUrl() == resourcev3.ClusterType {
				names, err := edsServices(r)
				if err != nil {
					return nil, err
				}
				if len(names) > 0 && !slices.Equal(names, edsNames) {
					edsNames = names
					req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: names}
					if rec.Endpoints != nil {
						req.VersionInfo, req.ResponseNonce = rec.Endpoints.GetVersionInfo(), rec.Endpoints.GetNonce()
					}
					if err := stream.Send(req); err != nil {
						return nil, err
					}
				}
			}
			timer.Reset(o.Quiet)
		}
	}
}

// edsServices are the EDS service names of a CDS response's clusters.
func edsServices(r *discoveryv3.DiscoveryResponse) ([]string, error) {
	var names []string
	for _, a := range r.GetResources() {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			return nil, fmt.Errorf("decode cluster: %w", err)
		}
		if c.GetType() == clusterv3.Cluster_EDS {
			n := c.GetEdsClusterConfig().GetServiceName()
			if n == "" {
				n = c.GetName()
			}
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// ResourceNames lists a response's resources by name, for a summary.
func ResourceNames(r *discoveryv3.DiscoveryResponse) []string {
	var out []string
	for _, a := range r.GetResources() {
		if n, ok := ResourceName(a); ok {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// ResourceName is a resource's name (a ClusterLoadAssignment's cluster
// name), or "? " and why it does not decode; false when it has neither.
func ResourceName(a *anypb.Any) (string, bool) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "? " + err.Error(), true
	}
	type named interface{ GetName() string }
	type cla interface{ GetClusterName() string }
	switch x := m.(type) {
	case named:
		return x.GetName(), true
	case cla:
		return x.GetClusterName(), true
	}
	return "", false
}

// Fixture is a recorded response and the name of its file.
type Fixture struct {
	Name string
	Resp *discoveryv3.DiscoveryResponse
}

// WriteFixtures writes each recorded response (a nil one is skipped) to
// dir/NAME.pb in deterministic wire form, and a README that starts with
// header and lists each response's version and resources as names gives
// them. It returns the README.
func WriteFixtures(t testing.TB, dir, header string, names func(*discoveryv3.DiscoveryResponse) []string, fixtures ...Fixture) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var summary strings.Builder
	summary.WriteString(header)
	for _, f := range fixtures {
		if f.Resp == nil {
			continue
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(f.Resp)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name+".pb"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&summary, "%s version %s: %d resources\n", f.Name, f.Resp.GetVersionInfo(), len(f.Resp.GetResources()))
		for _, n := range names(f.Resp) {
			fmt.Fprintf(&summary, "  %s\n", n)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte(summary.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return summary.String()
}

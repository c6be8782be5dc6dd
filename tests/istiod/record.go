package istiod

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shunt-dev/shunt/wire"
	"github.com/shunt-dev/shunt/xdsclient"
)

// Recording is the last response of each type a sidecar got, as istiod
// sent it.
type Recording struct {
	Listeners, Clusters, Endpoints, NameTable *discoveryv3.DiscoveryResponse
}

// Record subscribes as sidecar nodeID (with the DNS capture metadata) to
// listeners, clusters, the NameTable and the endpoints the clusters name,
// ACKs everything, and returns once istiod has been quiet for quiet with
// all of them answered.
func (cp *CP) Record(ctx context.Context, nodeID string, quiet time.Duration) (*Recording, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, err := grpc.NewClient("passthrough:///"+XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(cp.Dial), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	node := &corev3.Node{Id: nodeID, Metadata: NodeMetadata(), UserAgentName: "shunt-recorder"}
	for i, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, wire.IstioNameTableType} {
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
	rec := &Recording{}
	var edsNames []string
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			if rec.Listeners != nil && rec.Clusters != nil && rec.NameTable != nil && (len(edsNames) == 0 || rec.Endpoints != nil) {
				return rec, nil
			}
			timer.Reset(quiet)
		case x := <-ch:
			if x.err != nil {
				return nil, fmt.Errorf("receive: %w", x.err)
			}
			r := x.r
			ack := &discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}
			switch r.GetTypeUrl() {
			case resourcev3.ListenerType:
				rec.Listeners = r
			case resourcev3.ClusterType:
				rec.Clusters = r
			case resourcev3.EndpointType:
				rec.Endpoints = r
				ack.ResourceNames = edsNames
			case wire.IstioNameTableType:
				rec.NameTable = r
			default:
				return nil, fmt.Errorf("unexpected response type %s", r.GetTypeUrl())
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
					if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: names}); err != nil {
						return nil, err
					}
				}
			}
			timer.Reset(quiet)
		}
	}
}

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

// ResourceNames lists the names of a response's resources, and for a
// NameTable each host with its addresses, for a recording's summary.
func ResourceNames(r *discoveryv3.DiscoveryResponse) []string {
	var out []string
	for _, a := range r.GetResources() {
		if a.GetTypeUrl() == wire.IstioNameTableType {
			table, err := xdsclient.DecodeNameTable(a.GetValue())
			if err != nil {
				out = append(out, "? "+err.Error())
				continue
			}
			for h, info := range table {
				out = append(out, fmt.Sprintf("%s %s (registry %s, namespace %s)", h, strings.Join(info.IPs, ","), info.Registry, info.Namespace))
			}
			continue
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			out = append(out, "? "+err.Error())
			continue
		}
		type named interface{ GetName() string }
		type cla interface{ GetClusterName() string }
		switch x := m.(type) {
		case named:
			out = append(out, x.GetName())
		case cla:
			out = append(out, x.GetClusterName())
		}
	}
	slices.Sort(out)
	return out
}

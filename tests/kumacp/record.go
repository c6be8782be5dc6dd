package kumacp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// Recording is the last response of each type a node got, as kuma-cp sent
// it.
type Recording struct {
	Listeners, Clusters, Endpoints *discoveryv3.DiscoveryResponse
}

// RecordOptions say who the recording node is.
type RecordOptions struct {
	NodeID   string
	Metadata *structpb.Struct
	TLS      *tls.Config
	// Token, when set, is sent raw as authorization, as kuma-dp does.
	Token string
	// Quiet is how long no response must come before the recording is
	// complete (default 2 s).
	Quiet time.Duration
}

// Record subscribes to listeners, clusters and the endpoints the clusters
// name, ACKs everything, and returns once kuma-cp has been quiet for
// o.Quiet with all three answered.
func Record(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr string, o RecordOptions) (*Recording, error) {
	if o.Quiet == 0 {
		o.Quiet = 2 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", o.Token)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(o.TLS)),
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
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType}); err != nil {
		return nil, err
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}); err != nil {
		return nil, err
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
			if rec.Listeners != nil && rec.Clusters != nil && (len(edsNames) == 0 || rec.Endpoints != nil) {
				return rec, nil
			}
			timer.Reset(o.Quiet)
		case x := <-ch:
			if x.err != nil {
				return nil, fmt.Errorf("receive: %w", x.err)
			}
			r := x.r
			ack := &discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}
			switch r.GetTypeUrl() {
			case resourcev3.ListenerType:
				rec.Listeners = r
			case resourcev3.EndpointType:
				rec.Endpoints = r
				ack.ResourceNames = edsNames
			case resourcev3.ClusterType:
				rec.Clusters = r
			default:
				return nil, fmt.Errorf("unexpected response type %s", r.GetTypeUrl())
			}
			if err := stream.Send(ack); err != nil {
				return nil, err
			}
			if r.GetTypeUrl() == resourcev3.ClusterType {
				names, err := edsClusterNames(r)
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

func edsClusterNames(r *discoveryv3.DiscoveryResponse) ([]string, error) {
	var names []string
	for _, a := range r.GetResources() {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			return nil, errors.New("decode cluster: " + err.Error())
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

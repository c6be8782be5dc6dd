package istiod

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/shunt-dev/shunt/tests/peers"
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
	rec, err := peers.Record(ctx, cp.Dial, XDSAddr, peers.RecordOptions{
		NodeID: nodeID, Metadata: NodeMetadata(), Types: []string{wire.IstioNameTableType}, Quiet: quiet,
	})
	if err != nil {
		return nil, err
	}
	return &Recording{Listeners: rec.Listeners, Clusters: rec.Clusters, Endpoints: rec.Endpoints,
		NameTable: rec.Others[wire.IstioNameTableType]}, nil
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
		if n, ok := peers.ResourceName(a); ok {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

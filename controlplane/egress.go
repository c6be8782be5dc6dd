package controlplane

import (
	"fmt"
	"net/netip"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/shunt-dev/shunt/mesh"
)

// A ZoneEgress node says what it is in its metadata, as kuma-dp started
// with --proxy-type=egress does; its node id is the ZoneEgress's name.
const (
	NodeMetadataProxyType = "dataplane.proxyType"
	ProxyTypeEgress       = "egress"
	// EgressListenerName is the egress's one listener.
	EgressListenerName = "shunt:egress"
)

// EgressClusterName is the egress's cluster of one ExternalService of a
// mesh: the same service name may exist in several meshes.
func EgressClusterName(meshName, esName string) string {
	return ExternalClusterPrefix + meshName + ":" + esName
}

// TranslateEgress builds a ZoneEgress's configuration, Kuma's design: one
// listener on the egress's address and port that reads the TLS server name
// (tls_inspector), one filter chain per service of each mesh matched on the
// SNI a sidecar sends (EgressSNI), terminating the mesh mTLS (the egress's
// identity in that mesh, a client certificate from the mesh CA required),
// and tcp_proxy to the services' clusters, which do what a sidecar would do
// without egress: originate the ExternalService's TLS or connect plainly.
// views are those of the meshes that route through zone egress, from the
// egress's zone; an SNI no chain names matches nothing and is closed.
func TranslateEgress(eg mesh.ZoneEgress, views []mesh.View, opts TranslateOptions) (Resources, error) {
	var out Resources
	var clusters []*cluster.Cluster
	var chains []*listener.FilterChain
	for _, v := range views {
		services := map[string][]*mesh.ExternalService{}
		for _, es := range v.ExternalServices {
			services[es.Service] = append(services[es.Service], es)
			c, err := directCluster(es, EgressClusterName(es.Mesh, es.Name), opts)
			if err != nil {
				return Resources{}, fmt.Errorf("egress cluster for ExternalService %s (%s): %w", es.Name, es.Origin, err)
			}
			clusters = append(clusters, c)
			out.Clusters = append(out.Clusters, c)
		}
		names := make([]string, 0, len(services))
		for s := range services {
			names = append(names, s)
		}
		slices.Sort(names)
		for _, svc := range names {
			var targets []string
			for _, es := range services[svc] {
				targets = append(targets, EgressClusterName(es.Mesh, es.Name))
			}
			sni := EgressSNI(v.Mesh.Name, svc)
			filter, err := tcpFilter("egress:"+v.Mesh.Name+":"+svc, targets)
			if err != nil {
				return Resources{}, err
			}
			ts, err := transportSocket(&tlsv3.DownstreamTlsContext{
				RequireClientCertificate: wrapperspb.Bool(true),
				CommonTlsContext: meshTLSContext(v.Mesh.Name, &tlsv3.CertificateValidationContext{
					// Any proxy of the mesh: its certificate is from the
					// mesh CA and names an identity of the mesh.
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
						SanType: tlsv3.SubjectAltNameMatcher_URI,
						Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "spiffe://" + v.Mesh.Name + "/"}},
					}},
				}),
			})
			if err != nil {
				return Resources{}, err
			}
			chains = append(chains, &listener.FilterChain{
				Name:             sni,
				FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{sni}, TransportProtocol: "tls"},
				TransportSocket:  ts,
				Filters:          []*listener.Filter{filter},
			})
		}
	}
	if len(chains) > 0 {
		inspector, err := anypb.New(&tlsinspector.TlsInspector{})
		if err != nil {
			return Resources{}, fmt.Errorf("marshal tls_inspector: %w", err)
		}
		// The egress binds the address it was given; a hostname is only
		// how sidecars find it.
		bind := netip.IPv4Unspecified()
		if a, err := netip.ParseAddr(eg.Address); err == nil {
			bind = a
		}
		l := &listener.Listener{
			Name:             EgressListenerName,
			Address:          socketAddress(bind, uint32(eg.Port), core.SocketAddress_TCP),
			TrafficDirection: core.TrafficDirection_INBOUND,
			ListenerFilters: []*listener.ListenerFilter{{
				Name:       wellknown.TlsInspector,
				ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: inspector},
			}},
			FilterChains: chains,
		}
		out.Listeners = []types.Resource{l}
	}
	for _, r := range out.Listeners {
		if err := r.(*listener.Listener).ValidateAll(); err != nil {
			return Resources{}, fmt.Errorf("egress listener: %w", err)
		}
	}
	for _, c := range clusters {
		if err := c.ValidateAll(); err != nil {
			return Resources{}, fmt.Errorf("egress cluster %s: %w", c.GetName(), err)
		}
	}
	return out, nil
}

package main

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	// Every type an Any may carry in what the double implements.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// implemented is every field of every message the double acts on, with
// where it does: a field set in a resource and missing here is refused
// (NACK, or a bootstrap error) with its path. docs/xds.md carries this
// table; TestFieldTableInDocs keeps them equal.
var implemented = map[string]map[string]string{
	// Listeners (LDS).
	"envoy.config.listener.v3.Listener": {
		"name":                 "logs; names the listener",
		"address":              "listen.go: bound unless bind_to_port is false; matched against the original destination otherwise",
		"additional_addresses": "listen.go: bound (IPV6_V6ONLY, as Envoy) or matched like address",
		"bind_to_port":         "listen.go: false makes a listener that only use_original_dst hands connections to",
		"use_original_dst":     "listen.go: SO_ORIGINAL_DST picks the listener whose address is the original destination",
		"traffic_direction":    "no behaviour (statistics in Envoy)",
		"filter_chains":        "listen.go: chosen by filter_chain_match",
		"default_filter_chain": "listen.go: when no chain matches",
		"listener_filters":     "listen.go: tls_inspector (TCP), dns_filter (UDP)",
		"udp_listener_config":  "dns.go: a UDP listener",
		"metadata":             "no behaviour",
	},
	"envoy.config.listener.v3.AdditionalAddress": {"address": "listen.go"},
	"envoy.config.listener.v3.FilterChain": {
		"name":               "logs",
		"filter_chain_match": "listen.go: selectChain",
		"filters":            "listen.go: one network filter, tcp_proxy or http_connection_manager",
		"transport_socket":   "listen.go: DownstreamTlsContext terminates TLS",
	},
	"envoy.config.listener.v3.FilterChainMatch": {
		"destination_port":   "listen.go: selectChain, exact port first",
		"prefix_ranges":      "listen.go: selectChain, longest prefix first",
		"server_names":       "listen.go: selectChain, SNI from tls_inspector, exact then *.suffix",
		"transport_protocol": "listen.go: selectChain, tls or raw_buffer from tls_inspector",
	},
	"envoy.config.core.v3.CidrRange":                                  {"address_prefix": "listen.go", "prefix_len": "listen.go"},
	"envoy.config.listener.v3.Filter":                                 {"name": "logs", "typed_config": "listen.go"},
	"envoy.config.listener.v3.ListenerFilter":                         {"name": "logs", "typed_config": "listen.go"},
	"envoy.config.listener.v3.UdpListenerConfig":                      {},
	"envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": {},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": {
		"stat_prefix":       "no behaviour",
		"cluster":           "proxy.go: the upstream cluster",
		"weighted_clusters": "proxy.go: a cluster picked by weight per connection",
	},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster":               {"clusters": "proxy.go"},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": {"name": "proxy.go", "weight": "proxy.go"},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {
		"stat_prefix":  "no behaviour",
		"codec_type":   "proxy.go: AUTO only (HTTP/1.1 requests are routed)",
		"route_config": "proxy.go: inline routes",
		"http_filters": "proxy.go: the router filter only",
	},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter":         {"name": "proxy.go", "typed_config": "proxy.go"},
	"envoy.extensions.filters.http.router.v3.Router":                                 {},
	"envoy.config.route.v3.RouteConfiguration":                                       {"name": "logs", "virtual_hosts": "proxy.go", "validate_clusters": "no behaviour (clusters are looked up per connection)"},
	"envoy.config.route.v3.VirtualHost":                                              {"name": "logs", "domains": "proxy.go: matched against the request's authority (exact, *.suffix, prefix.*, *)", "routes": "proxy.go"},
	"envoy.config.route.v3.Route":                                                    {"match": "proxy.go", "route": "proxy.go"},
	"envoy.config.route.v3.RouteMatch":                                               {"prefix": "proxy.go: path prefix"},
	"envoy.config.route.v3.RouteAction":                                              {"cluster": "proxy.go", "weighted_clusters": "proxy.go: a cluster picked by weight", "timeout": "accepted: the double sets no request timeout, 0 is Envoy's 'none'"},
	"envoy.config.route.v3.WeightedCluster":                                          {"clusters": "proxy.go"},
	"envoy.config.route.v3.WeightedCluster.ClusterWeight":                            {"name": "proxy.go", "weight": "proxy.go"},
	"envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig":                     {"stat_prefix": "no behaviour", "server_config": "dns.go"},
	"envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig.ServerContextConfig": {"inline_dns_table": "dns.go"},
	"envoy.data.dns.v3.DnsTable":                                                     {"virtual_domains": "dns.go: A and AAAA answers"},
	"envoy.data.dns.v3.DnsTable.DnsVirtualDomain":                                    {"name": "dns.go", "endpoint": "dns.go", "answer_ttl": "dns.go: the answers' TTL"},
	"envoy.data.dns.v3.DnsTable.DnsEndpoint":                                         {"address_list": "dns.go"},
	"envoy.data.dns.v3.DnsTable.AddressList":                                         {"address": "dns.go"},
	"envoy.config.core.v3.Address":                                                   {"socket_address": "listen.go, cluster.go", "pipe": "ads.go: the xDS server over a Unix socket"},
	"envoy.config.core.v3.SocketAddress":                                             {"protocol": "listen.go: TCP or UDP", "address": "listen.go, cluster.go", "port_value": "listen.go, cluster.go"},
	"envoy.config.core.v3.Pipe":                                                      {"path": "ads.go"},
	"envoy.config.core.v3.Metadata":                                                  {"filter_metadata": "no behaviour"},
	"envoy.config.core.v3.TransportSocket":                                           {"name": "logs", "typed_config": "tls.go"},
	"envoy.config.core.v3.Locality":                                                  {"zone": "no behaviour (the control plane chose the endpoints by zone)", "region": "no behaviour", "sub_zone": "no behaviour"},
	"envoy.config.core.v3.ConfigSource":                                              {"ads": "ads.go: on the ADS stream", "resource_api_version": "ads.go: V3 only"},
	"envoy.config.core.v3.AggregatedConfigSource":                                    {},
	"envoy.config.core.v3.DataSource":                                                {"inline_bytes": "tls.go", "inline_string": "tls.go", "filename": "tls.go: read when the resource is applied"},
	"envoy.config.cluster.v3.Cluster": {
		"name":                             "cluster.go",
		"type":                             "cluster.go: STATIC, STRICT_DNS, LOGICAL_DNS, ORIGINAL_DST, EDS",
		"connect_timeout":                  "cluster.go: the dial timeout",
		"lb_policy":                        "cluster.go: ROUND_ROBIN, CLUSTER_PROVIDED (ORIGINAL_DST)",
		"load_assignment":                  "cluster.go: the endpoints",
		"dns_lookup_family":                "cluster.go: V4_PREFERRED, V4_ONLY, V6_ONLY, AUTO, ALL",
		"transport_socket":                 "tls.go: UpstreamTlsContext originates TLS",
		"typed_extension_protocol_options": "cluster.go: explicit HTTP/1.1 only (bytes are relayed as the app sent them)",
		"metadata":                         "no behaviour",
		"eds_cluster_config":               "ads.go: endpoints from EDS on the ADS stream",
	},
	"envoy.config.cluster.v3.Cluster.EdsClusterConfig":                          {"eds_config": "ads.go", "service_name": "ads.go: the assignment's name"},
	"envoy.config.endpoint.v3.ClusterLoadAssignment":                            {"cluster_name": "cluster.go", "endpoints": "cluster.go"},
	"envoy.config.endpoint.v3.LocalityLbEndpoints":                              {"locality": "no behaviour", "lb_endpoints": "cluster.go: round robin over all"},
	"envoy.config.endpoint.v3.LbEndpoint":                                       {"endpoint": "cluster.go"},
	"envoy.config.endpoint.v3.Endpoint":                                         {"address": "cluster.go"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":                    {"explicit_http_config": "cluster.go"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": {"http_protocol_options": "cluster.go: HTTP/1.1, relayed as is"},
	"envoy.config.core.v3.Http1ProtocolOptions":                                 {},
	"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": {
		"sni":                 "tls.go: the server name sent",
		"allow_renegotiation": "tls.go: crypto/tls RenegotiateFreelyAsClient",
		"common_tls_context":  "tls.go",
	},
	"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": {
		"common_tls_context":         "tls.go",
		"require_client_certificate": "tls.go: a client certificate is required and verified",
	},
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext": {
		"alpn_protocols":                     "tls.go: offered (upstream) / accepted (downstream)",
		"validation_context":                 "tls.go: the peer's chain and names are verified",
		"combined_validation_context":        "tls.go: default context plus an SDS one, merged",
		"tls_certificates":                   "tls.go: the certificate presented",
		"tls_certificate_sds_secret_configs": "tls.go: the certificate presented, from SDS",
	},
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext": {
		"default_validation_context":           "tls.go",
		"validation_context_sds_secret_config": "tls.go",
	},
	"envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext": {
		"trusted_ca":                    "tls.go: the chain must end at one of these",
		"match_typed_subject_alt_names": "tls.go: one SAN must match one matcher",
	},
	"envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher": {"san_type": "tls.go: DNS, IP_ADDRESS, URI", "matcher": "tls.go"},
	"envoy.type.matcher.v3.StringMatcher":                             {"exact": "tls.go", "prefix": "tls.go"},
	"envoy.extensions.transport_sockets.tls.v3.TlsCertificate":        {"certificate_chain": "tls.go", "private_key": "tls.go"},
	"envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig":       {"name": "ads.go: subscribed on the ADS stream", "sds_config": "ads.go: ADS only"},
	"envoy.extensions.transport_sockets.tls.v3.Secret":                {"name": "ads.go", "tls_certificate": "tls.go", "validation_context": "tls.go"},
}

// bootstrapOnly is what a bootstrap may hold beyond the dynamic resources'
// fields.
var bootstrapOnly = map[string]map[string]string{
	"envoy.config.bootstrap.v3.Bootstrap":                                       {"node": "ads.go: sent on the ADS stream", "static_resources": "main.go: the xDS cluster", "dynamic_resources": "ads.go", "admin": "admin.go: /ready, /drain_listeners, /quitquitquit"},
	"envoy.config.bootstrap.v3.Bootstrap.StaticResources":                       {"clusters": "main.go: the cluster ads_config names"},
	"envoy.config.bootstrap.v3.Bootstrap.DynamicResources":                      {"ads_config": "ads.go", "lds_config": "ads.go: ADS only", "cds_config": "ads.go: ADS only"},
	"envoy.config.bootstrap.v3.Admin":                                           {"address": "admin.go"},
	"envoy.config.core.v3.ApiConfigSource":                                      {"api_type": "ads.go: GRPC (state of the world)", "transport_api_version": "ads.go: V3", "grpc_services": "ads.go: one envoy_grpc", "set_node_on_first_message_only": "ads.go"},
	"envoy.config.core.v3.GrpcService":                                          {"envoy_grpc": "ads.go", "timeout": "no behaviour"},
	"envoy.config.core.v3.GrpcService.EnvoyGrpc":                                {"cluster_name": "ads.go"},
	"envoy.config.core.v3.Node":                                                 {"id": "ads.go", "cluster": "ads.go", "locality": "ads.go", "metadata": "ads.go"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": {"http_protocol_options": "cluster.go", "http2_protocol_options": "ads.go: gRPC is HTTP/2"},
	"envoy.config.core.v3.Http2ProtocolOptions":                                 {},
	"envoy.config.cluster.v3.Cluster":                                           {"upstream_connection_options": "Go's dialer keeps TCP keepalive on"},
	"envoy.config.cluster.v3.UpstreamConnectionOptions":                         {"tcp_keepalive": "Go's dialer keeps TCP keepalive on"},
	"envoy.config.core.v3.TcpKeepalive":                                         {},
}

// leaves are messages taken whole.
var leaves = map[protoreflect.FullName]bool{
	"google.protobuf.Duration":    true,
	"google.protobuf.BoolValue":   true,
	"google.protobuf.UInt32Value": true,
	"google.protobuf.Struct":      true,
}

func merged(extra map[string]map[string]string) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, t := range []map[string]map[string]string{implemented, extra} {
		for typ, fs := range t {
			if out[typ] == nil {
				out[typ] = map[string]string{}
			}
			for f, w := range fs {
				out[typ][f] = w
			}
		}
	}
	return out
}

// checkFields refuses any field the table does not hold, naming its path.
func checkFields(m proto.Message, path string, table map[string]map[string]string) error {
	return walk(m.ProtoReflect(), path, table)
}

func walk(m protoreflect.Message, path string, table map[string]map[string]string) error {
	name := m.Descriptor().FullName()
	if leaves[name] {
		return nil
	}
	if name == "google.protobuf.Any" {
		a := m.Interface().(*anypb.Any)
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: type %s not implemented by the double", path, a.GetTypeUrl())
		}
		return walk(inner.ProtoReflect(), path+"<"+string(inner.ProtoReflect().Descriptor().FullName())+">", table)
	}
	allowed, ok := table[string(name)]
	if !ok {
		return fmt.Errorf("%s: message type %s not implemented by the double", path, name)
	}
	if len(m.GetUnknown()) > 0 {
		return fmt.Errorf("%s: unknown fields in %s", path, name)
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fp := path + "." + string(fd.Name())
		if _, ok := allowed[string(fd.Name())]; !ok {
			err = fmt.Errorf("%s: field not implemented by the double", fp)
			return false
		}
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = walk(l.Get(i).Message(), fmt.Sprintf("%s[%d]", fp, i), table)
			}
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = walk(mv.Message(), fmt.Sprintf("%s[%s]", fp, k.String()), table)
				return err == nil
			})
		case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
			err = walk(v.Message(), fp, table)
		}
		return err == nil
	})
	return err
}

// fieldTable renders the table for docs/xds.md.
func fieldTable() string {
	var rows []string
	for typ, fs := range merged(bootstrapOnly) {
		for f, w := range fs {
			rows = append(rows, fmt.Sprintf("| `%s` | `%s` | %s |", shortType(typ), f, w))
		}
		if len(fs) == 0 {
			rows = append(rows, fmt.Sprintf("| `%s` | (no fields) | accepted |", shortType(typ)))
		}
	}
	sort.Strings(rows)
	return "| message | field | where the double honours it |\n|---|---|---|\n" + strings.Join(rows, "\n") + "\n"
}

func shortType(t string) string {
	t = strings.TrimPrefix(t, "envoy.")
	return t
}

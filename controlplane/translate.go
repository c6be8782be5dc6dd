package controlplane

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dnstable "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	dnsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/shunt-dev/shunt/controlplane/meshca"
	"github.com/shunt-dev/shunt/mesh"
	contract "github.com/shunt-dev/shunt/wire"
)

// Names of the resources every node receives. The agent finds its DNS table
// in the listener named DNSListenerName (or, equivalently, in any listener
// carrying the DNSFilterName UDP listener filter).
const (
	DNSListenerName      = contract.ShuntDNSListener
	OutboundListenerName = "shunt:outbound"
	PassthroughCluster   = contract.ShuntPassthroughCluster
	BlackholeCluster     = "outbound:blackhole"
	// ExternalClusterPrefix + ExternalService name is the cluster of each
	// ExternalService the node can reach.
	ExternalClusterPrefix = "external:"
	// OutboundListenerPrefix + name:port (or ip:port) is the listener of
	// each route.
	OutboundListenerPrefix = "outbound:"
	DNSFilterName          = contract.DNSFilter
	// MetadataNamespace holds, on each external cluster, the ExternalService
	// it stands for and its real address (for people reading a config
	// dump: the endpoints may be ZoneEgress proxies).
	MetadataNamespace = "shunt"
)

// TranslateOptions are the node-independent knobs of the xDS produced.
type TranslateOptions struct {
	// OutboundPort is where capture sends the workload's outbound TCP; the
	// listener there hands connections to the VIP listeners by original
	// destination. Kuma's default is 15001.
	OutboundPort uint32
	// DNSAddress is where the DNS filter listener would bind in Envoy.
	DNSAddress netip.AddrPort
	// DNSTTL is the TTL of answers; VIPs are stable, so it can be long.
	DNSTTL time.Duration
	// SystemCAFile verifies servers of ExternalServices that have TLS but no
	// caCert. Empty leaves such servers unverified, as Kuma does.
	SystemCAFile string
	// ConnectTimeout for upstream connections.
	ConnectTimeout time.Duration
}

// DefaultTranslateOptions returns the defaults documented in
// docs/controlplane.md.
func DefaultTranslateOptions() TranslateOptions {
	return TranslateOptions{
		OutboundPort:   contract.OutboundPort,
		DNSAddress:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 15054),
		DNSTTL:         contract.MeshNameTTL,
		SystemCAFile:   "/etc/ssl/certs/ca-certificates.crt",
		ConnectTimeout: 5 * time.Second,
	}
}

// Resources is the xDS a node receives.
type Resources struct {
	Listeners []types.Resource
	Clusters  []types.Resource
}

// Translate turns a node's view into Envoy listeners and clusters. Every
// resource is checked with its proto's validation rules, so that a bug here
// is a refused snapshot rather than a NACK from every proxy.
func Translate(v mesh.View, vips mesh.VIPs, opts TranslateOptions) (Resources, error) {
	t := translator{opts: opts, vips: vips, view: v}
	return t.run()
}

// translateCached is Translate with resources reused from c, whose entries
// must all come from the same opts.
func translateCached(v mesh.View, vips mesh.VIPs, opts TranslateOptions, c *translateCache) (Resources, error) {
	t := translator{opts: opts, vips: vips, view: v, cache: c}
	return t.run()
}

type translator struct {
	opts TranslateOptions
	vips mesh.VIPs
	view mesh.View
	out  Resources
	// cache, when set, supplies resources built (and validated) before
	// from the same inputs; the options must not change between uses.
	cache *translateCache
	// fresh lists what was built in this run, the only resources that
	// still need validating.
	freshL []*listener.Listener
	freshC []*cluster.Cluster
	// pending are the fresh resources to cache once they are valid.
	pending []pendingEntry
}

type pendingEntry struct {
	key string
	v   any
	// at is the index of the resource in out.Listeners or out.Clusters.
	at int
}

func (t *translator) run() (Resources, error) {
	egKey := ""
	if t.cache != nil && t.view.Mesh.ZoneEgress {
		egKey = egressKey(t.view.Egresses)
	}
	t.out.Clusters = make([]types.Resource, 0, len(t.view.ExternalServices)+1)
	for _, es := range t.view.ExternalServices {
		var key string
		if t.cache != nil {
			key = clusterKey(es, t.view.Mesh.ZoneEgress, egKey)
			if v, ok := t.cache.get(key); ok {
				t.out.Clusters = append(t.out.Clusters, v.(*cluster.Cluster))
				continue
			}
		}
		c, err := t.externalCluster(es)
		if err != nil {
			return Resources{}, fmt.Errorf("cluster for ExternalService %s (%s): %w", es.Name, es.Origin, err)
		}
		t.out.Clusters = append(t.out.Clusters, c)
		t.freshC = append(t.freshC, c)
		if t.cache != nil {
			t.pending = append(t.pending, pendingEntry{key: key, v: c, at: len(t.out.Clusters) - 1})
		}
	}
	var last *cluster.Cluster
	if t.view.Mesh.Passthrough {
		last = passthroughCluster()
	} else {
		last = blackholeCluster(t.opts)
	}
	t.out.Clusters = append(t.out.Clusters, last)
	t.freshC = append(t.freshC, last)

	table := make([]*dnstable.DnsTable_DnsVirtualDomain, 0, len(t.view.Routes))
	t.out.Listeners = make([]types.Resource, 0, len(t.view.Routes)+2)
	for i := range t.view.Routes {
		r := &t.view.Routes[i]
		var key string
		if t.cache != nil {
			key = routeKey(r, t.vips)
			if v, ok := t.cache.get(key); ok {
				cr := v.(cachedRoute)
				t.out.Listeners = append(t.out.Listeners, cr.l)
				if cr.domain != nil {
					table = append(table, cr.domain)
				}
				continue
			}
		}
		l, domain, err := t.routeListener(r)
		if err != nil {
			return Resources{}, err
		}
		t.out.Listeners = append(t.out.Listeners, l)
		t.freshL = append(t.freshL, l)
		if domain != nil {
			table = append(table, domain)
		}
		if t.cache != nil {
			t.pending = append(t.pending, pendingEntry{key: key, v: cachedRoute{l: l, domain: domain}, at: len(t.out.Listeners) - 1})
		}
	}
	outbound, dns := t.outboundListener(), t.dnsListener(table)
	t.out.Listeners = append(t.out.Listeners, outbound, dns)
	t.freshL = append(t.freshL, outbound, dns)

	// Resources taken from the cache were validated when built.
	for _, l := range t.freshL {
		if err := l.ValidateAll(); err != nil {
			return Resources{}, fmt.Errorf("listener %s: %w", l.GetName(), err)
		}
	}
	for _, c := range t.freshC {
		if err := c.ValidateAll(); err != nil {
			return Resources{}, fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
	}
	for _, p := range t.pending {
		switch v := p.v.(type) {
		case *cluster.Cluster:
			c, err := compact(v, &cluster.Cluster{Name: v.GetName()})
			if err != nil {
				return Resources{}, fmt.Errorf("cluster %s: %w", v.GetName(), err)
			}
			t.out.Clusters[p.at] = c
			p.v = c
		case cachedRoute:
			l, err := compact(v.l, &listener.Listener{Name: v.l.GetName()})
			if err != nil {
				return Resources{}, fmt.Errorf("listener %s: %w", v.l.GetName(), err)
			}
			t.out.Listeners[p.at] = l
			v.l = l
			p.v = v
		}
		t.cache.put(p.key, p.v)
	}
	return t.out, nil
}

// ExternalClusterName is the cluster of an ExternalService.
func ExternalClusterName(esName string) string { return ExternalClusterPrefix + esName }

// RouteListenerName is the listener of a route: name:port, or ip:port for
// ExternalServices addressed by IP.
func RouteListenerName(host string, port uint16) string {
	return OutboundListenerPrefix + host + ":" + strconv.Itoa(int(port))
}

func (t *translator) routeListener(r *mesh.Route) (*listener.Listener, *dnstable.DnsTable_DnsVirtualDomain, error) {
	var addrs []netip.Addr
	var domain *dnstable.DnsTable_DnsVirtualDomain
	name := ""
	if r.Hostname != "" {
		name = RouteListenerName(r.Hostname, r.Port)
		v4, ok := t.vips.V4[r.Hostname]
		if !ok {
			return nil, nil, fmt.Errorf("name %s: %w", r.Hostname, mesh.ErrNoVIP)
		}
		addrs = append(addrs, v4)
		if v6, ok := t.vips.V6[r.Hostname]; ok {
			addrs = append(addrs, v6)
		}
		domain = t.virtualDomain(r.Hostname, addrs)
	} else {
		name = RouteListenerName(r.IP.String(), r.Port)
		addrs = append(addrs, r.IP)
	}

	var clusters []string
	for _, es := range r.Targets {
		clusters = append(clusters, ExternalClusterName(es.Name))
	}
	var filter *listener.Filter
	var err error
	if r.Protocol.IsHTTP() {
		filter, err = httpFilter(name, r, clusters)
	} else {
		filter, err = tcpFilter(name, clusters)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("listener %s: %w", name, err)
	}
	l := &listener.Listener{
		Name:    name,
		Address: socketAddress(addrs[0], uint32(r.Port), core.SocketAddress_TCP),
		// The outbound listener hands connections over by original
		// destination; nothing listens on the VIPs themselves.
		BindToPort:       wrapperspb.Bool(false),
		TrafficDirection: core.TrafficDirection_OUTBOUND,
		FilterChains:     []*listener.FilterChain{{Filters: []*listener.Filter{filter}}},
		Metadata:         serviceMetadata(r),
	}
	for _, a := range addrs[1:] {
		l.AdditionalAddresses = append(l.AdditionalAddresses, &listener.AdditionalAddress{Address: socketAddress(a, uint32(r.Port), core.SocketAddress_TCP)})
	}
	return l, domain, nil
}

func serviceMetadata(r *mesh.Route) *core.Metadata {
	fields := map[string]*structpb.Value{"protocol": structpb.NewStringValue(string(r.Protocol))}
	if r.Service != "" {
		fields["service"] = structpb.NewStringValue(r.Service)
	}
	if r.Hostname != "" {
		fields["hostname"] = structpb.NewStringValue(r.Hostname)
	}
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataNamespace: {Fields: fields}}}
}

func (t *translator) virtualDomain(name string, addrs []netip.Addr) *dnstable.DnsTable_DnsVirtualDomain {
	list := make([]string, len(addrs))
	for i, a := range addrs {
		list[i] = a.String()
	}
	return &dnstable.DnsTable_DnsVirtualDomain{
		Name: name,
		Endpoint: &dnstable.DnsTable_DnsEndpoint{EndpointConfig: &dnstable.DnsTable_DnsEndpoint_AddressList{
			AddressList: &dnstable.DnsTable_AddressList{Address: list},
		}},
		AnswerTtl: durationpb.New(t.opts.DNSTTL),
	}
}

func tcpFilter(name string, clusters []string) (*listener.Filter, error) {
	tp := &tcpproxy.TcpProxy{StatPrefix: statPrefix(name)}
	if len(clusters) == 1 {
		tp.ClusterSpecifier = &tcpproxy.TcpProxy_Cluster{Cluster: clusters[0]}
	} else {
		wc := &tcpproxy.TcpProxy_WeightedCluster{}
		for _, c := range clusters {
			wc.Clusters = append(wc.Clusters, &tcpproxy.TcpProxy_WeightedCluster_ClusterWeight{Name: c, Weight: 1})
		}
		tp.ClusterSpecifier = &tcpproxy.TcpProxy_WeightedClusters{WeightedClusters: wc}
	}
	return typedFilter(wellknown.TCPProxy, tp)
}

func httpFilter(name string, r *mesh.Route, clusters []string) (*listener.Filter, error) {
	action := &route.RouteAction{}
	if len(clusters) == 1 {
		action.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: clusters[0]}
	} else {
		wc := &route.WeightedCluster{}
		for _, c := range clusters {
			wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: c, Weight: wrapperspb.UInt32(1)})
		}
		action.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	if r.Protocol == mesh.ProtocolGRPC {
		// gRPC streams outlive Envoy's default 15 s route timeout.
		action.Timeout = durationpb.New(0)
	}
	vhName := r.Hostname
	if vhName == "" {
		vhName = r.IP.String()
	}
	routerAny, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, err
	}
	m := &hcm.HttpConnectionManager{
		StatPrefix: statPrefix(name),
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: name,
			VirtualHosts: []*route.VirtualHost{{
				Name: vhName,
				// One listener per VIP and port, so any Host header is ours.
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_Route{Route: action},
				}},
			}},
			ValidateClusters: wrapperspb.Bool(false),
		}},
		HttpFilters: []*hcm.HttpFilter{{Name: wellknown.Router, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerAny}}},
	}
	return typedFilter(wellknown.HTTPConnectionManager, m)
}

func typedFilter(name string, m proto.Message) (*listener.Filter, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", name, err)
	}
	return &listener.Filter{Name: name, ConfigType: &listener.Filter_TypedConfig{TypedConfig: a}}, nil
}

func statPrefix(name string) string {
	return strings.NewReplacer(":", "_", ".", "_").Replace(name)
}

func socketAddress(a netip.Addr, port uint32, proto core.SocketAddress_Protocol) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Protocol:      proto,
		Address:       a.String(),
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

func hostAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       host,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

func (t *translator) externalCluster(es *mesh.ExternalService) (*cluster.Cluster, error) {
	if t.view.Mesh.ZoneEgress {
		return t.egressBoundCluster(es)
	}
	return directCluster(es, ExternalClusterName(es.Name), t.opts)
}

// egressBoundCluster is a sidecar's cluster of an ExternalService reached
// through the zone's egresses, as Kuma builds it: the endpoints are the
// egresses, the connection is mesh mTLS (the sidecar's identity, the egress
// verified against the mesh CA and by its own identity), and the SNI names
// the service and mesh, which is all the egress routes by. The
// ExternalService's own TLS is the egress's to originate.
func (t *translator) egressBoundCluster(es *mesh.ExternalService) (*cluster.Cluster, error) {
	name := ExternalClusterName(es.Name)
	c := &cluster.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(t.opts.ConnectTimeout),
		LbPolicy:       cluster.Cluster_ROUND_ROBIN,
		Metadata:       externalMetadata(es),
	}
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	dns := false
	for _, eg := range t.view.Egresses {
		if _, err := netip.ParseAddr(eg.Address); err != nil {
			dns = true
		}
		cla.Endpoints = append(cla.Endpoints, &endpoint.LocalityLbEndpoints{
			Locality:    &core.Locality{Zone: eg.Zone},
			LbEndpoints: []*endpoint.LbEndpoint{lbEndpoint(hostAddress(eg.Address, uint32(eg.Port)))},
		})
	}
	if dns {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
		c.DnsLookupFamily = cluster.Cluster_V4_PREFERRED
	} else {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}
	}
	c.LoadAssignment = cla
	if err := setProtocol(c, es.Protocol); err != nil {
		return nil, err
	}
	// Every ZoneEgress has the same identity in a mesh, Kuma's.
	vc := &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
		SanType: tlsv3.SubjectAltNameMatcher_URI,
		Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: meshca.SPIFFEID(es.Mesh, EgressIdentityService)}},
	}}}
	ctx := &tlsv3.UpstreamTlsContext{
		Sni:              EgressSNI(es.Mesh, es.Service),
		CommonTlsContext: meshTLSContext(es.Mesh, vc),
	}
	ts, err := transportSocket(ctx)
	if err != nil {
		return nil, err
	}
	c.TransportSocket = ts
	return c, nil
}

// EgressIdentityService is the service in the identity of every ZoneEgress
// (spiffe://<mesh>/zone-egress), what Kuma's sidecars verify.
const EgressIdentityService = "zone-egress"

// MeshALPN is the ALPN protocol of mesh mTLS connections, Kuma's.
const MeshALPN = "kuma"

// EgressSNI is the server name a sidecar sends to the ZoneEgress for an
// ExternalService: Kuma's form, the service with the mesh as a tag,
// service{mesh=name}.
func EgressSNI(meshName, service string) string {
	return service + "{mesh=" + meshName + "}"
}

// Names of the SDS secrets of a mesh, Kuma's: every proxy of the mesh asks
// for the same names and gets its own identity under the first.
func IdentitySecretName(meshName string) string { return "identity_cert:secret:" + meshName }

// MeshCASecretName is the SDS secret holding the mesh CA's certificate.
func MeshCASecretName(meshName string) string { return "mesh_ca:secret:" + meshName }

func adsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}}
}

// meshTLSContext presents the proxy's mesh identity and verifies the peer
// against the mesh CA plus vc's name checks, both secrets over SDS on the
// ADS stream.
func meshTLSContext(meshName string, vc *tlsv3.CertificateValidationContext) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		AlpnProtocols:                  []string{MeshALPN},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{adsSecret(IdentitySecretName(meshName))},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         vc,
			ValidationContextSdsSecretConfig: adsSecret(MeshCASecretName(meshName)),
		}},
	}
}

func externalMetadata(es *mesh.ExternalService) *core.Metadata {
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataNamespace: {Fields: map[string]*structpb.Value{
		"external_service": structpb.NewStringValue(es.Name),
		"service":          structpb.NewStringValue(es.Service),
		"address":          structpb.NewStringValue(es.Address.String()),
	}}}}
}

// directCluster connects to the ExternalService itself, originating its TLS
// when it has some: a sidecar's cluster without zone egress, and the
// egress's own cluster of the service.
func directCluster(es *mesh.ExternalService, name string, opts TranslateOptions) (*cluster.Cluster, error) {
	c := &cluster.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(opts.ConnectTimeout),
		LbPolicy:       cluster.Cluster_ROUND_ROBIN,
		Metadata:       externalMetadata(es),
	}
	c.LoadAssignment = &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
		Locality:    &core.Locality{Zone: es.Zone},
		LbEndpoints: []*endpoint.LbEndpoint{lbEndpoint(hostAddress(es.Address.Host, uint32(es.Address.Port)))},
	}}}
	if es.Address.IsIP() {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}
	} else {
		// One name, possibly many addresses behind it: LOGICAL_DNS
		// keeps one connection target at a time, as Envoy recommends
		// for large external web services.
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_LOGICAL_DNS}
		c.DnsLookupFamily = cluster.Cluster_V4_PREFERRED
	}
	if err := setProtocol(c, es.Protocol); err != nil {
		return nil, err
	}
	if es.TLS != nil {
		ts, err := upstreamTLS(es, opts)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	return c, nil
}

func setProtocol(c *cluster.Cluster, p mesh.Protocol) error {
	switch p {
	case mesh.ProtocolHTTP2, mesh.ProtocolGRPC:
		return setProtocolOptions(c, &httpopts.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}})
	case mesh.ProtocolHTTP:
		return setProtocolOptions(c, &httpopts.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}}})
	}
	return nil
}

func transportSocket(m proto.Message) (*core.TransportSocket, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("marshal TLS context: %w", err)
	}
	return &core.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

func lbEndpoint(a *core.Address) *endpoint.LbEndpoint {
	return &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: a}}}
}

func setProtocolOptions(c *cluster.Cluster, cfg *httpopts.HttpProtocolOptions_ExplicitHttpConfig) error {
	opts := &httpopts.HttpProtocolOptions{UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: cfg}}
	a, err := anypb.New(opts)
	if err != nil {
		return fmt.Errorf("marshal protocol options: %w", err)
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": a}
	return nil
}

func upstreamTLS(es *mesh.ExternalService, opts TranslateOptions) (*core.TransportSocket, error) {
	ctx := &tlsv3.UpstreamTlsContext{
		Sni:                es.TLS.SNI,
		AllowRenegotiation: es.TLS.AllowRenegotiation,
		CommonTlsContext:   &tlsv3.CommonTlsContext{},
	}
	switch es.Protocol {
	case mesh.ProtocolHTTP:
		ctx.CommonTlsContext.AlpnProtocols = []string{"http/1.1"}
	case mesh.ProtocolHTTP2, mesh.ProtocolGRPC:
		ctx.CommonTlsContext.AlpnProtocols = []string{"h2"}
	}
	var trusted *core.DataSource
	switch {
	case len(es.TLS.CACert) > 0:
		trusted = &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: es.TLS.CACert}}
	case opts.SystemCAFile != "":
		trusted = &core.DataSource{Specifier: &core.DataSource_Filename{Filename: opts.SystemCAFile}}
	}
	if trusted != nil {
		vc := &tlsv3.CertificateValidationContext{TrustedCa: trusted}
		// A CA alone proves the server has some certificate from it; the
		// name check proves it is the server we meant to reach.
		if san := verifyName(es); san != nil {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{san}
		}
		ctx.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
	}
	if len(es.TLS.ClientCert) > 0 {
		ctx.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: es.TLS.ClientCert}},
			PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: es.TLS.ClientKey}},
		}}
	}
	return transportSocket(ctx)
}

// verifyName picks the identity the server's certificate must carry: the
// SNI when one is sent, otherwise the address itself.
func verifyName(es *mesh.ExternalService) *tlsv3.SubjectAltNameMatcher {
	exact := func(s string) *matcher.StringMatcher {
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}}
	}
	switch {
	case es.TLS.SNI != "":
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: exact(es.TLS.SNI)}
	case es.Address.IsIP():
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_IP_ADDRESS, Matcher: exact(es.Address.Host)}
	default:
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: exact(es.Address.Host)}
	}
}

func passthroughCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 PassthroughCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(5 * time.Second),
	}
}

// blackholeCluster has no endpoints: with passthrough off, connections to
// destinations the mesh does not know end there.
func blackholeCluster(opts TranslateOptions) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 BlackholeCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(opts.ConnectTimeout),
		LoadAssignment:       &endpoint.ClusterLoadAssignment{ClusterName: BlackholeCluster},
	}
}

func (t *translator) outboundListener() *listener.Listener {
	def := BlackholeCluster
	if t.view.Mesh.Passthrough {
		def = PassthroughCluster
	}
	filter, _ := tcpFilter(OutboundListenerName, []string{def})
	return &listener.Listener{
		Name:                OutboundListenerName,
		Address:             socketAddress(netip.IPv4Unspecified(), t.opts.OutboundPort, core.SocketAddress_TCP),
		AdditionalAddresses: []*listener.AdditionalAddress{{Address: socketAddress(netip.IPv6Unspecified(), t.opts.OutboundPort, core.SocketAddress_TCP)}},
		UseOriginalDst:      wrapperspb.Bool(true),
		TrafficDirection:    core.TrafficDirection_OUTBOUND,
		DefaultFilterChain:  &listener.FilterChain{Name: def, Filters: []*listener.Filter{filter}},
	}
}

func (t *translator) dnsListener(domains []*dnstable.DnsTable_DnsVirtualDomain) *listener.Listener {
	cfg := &dnsfilter.DnsFilterConfig{
		StatPrefix: "shunt_dns",
		ServerConfig: &dnsfilter.DnsFilterConfig_ServerContextConfig{
			ConfigSource: &dnsfilter.DnsFilterConfig_ServerContextConfig_InlineDnsTable{
				InlineDnsTable: &dnstable.DnsTable{VirtualDomains: domains},
			},
		},
	}
	a, _ := anypb.New(cfg)
	return &listener.Listener{
		Name:              DNSListenerName,
		Address:           socketAddress(t.opts.DNSAddress.Addr(), uint32(t.opts.DNSAddress.Port()), core.SocketAddress_UDP),
		UdpListenerConfig: &listener.UdpListenerConfig{},
		ListenerFilters: []*listener.ListenerFilter{{
			Name:       DNSFilterName,
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: a},
		}},
	}
}

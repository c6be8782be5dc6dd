package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
)

// xdsState is the last accepted resources of each type.
type xdsState struct {
	listeners map[string]*listenerv3.Listener
	clusters  map[string]*clusterv3.Cluster
	cla       map[string]*endpointv3.ClusterLoadAssignment
	secrets   map[string]*tlsv3.Secret
}

func (s xdsState) clone() xdsState {
	return xdsState{listeners: s.listeners, clusters: s.clusters, cla: s.cla, secrets: s.secrets}
}

// runtime is what connections are handled by, rebuilt on every update.
type runtime struct {
	listeners map[string]*lis
	// virtual are the listeners that do not bind, by address: where
	// use_original_dst hands connections.
	virtual  map[netip.AddrPort]*lis
	clusters map[string]*cluster
	// binds are the sockets wanted: network|address -> listener.
	binds map[string]*lis
}

type lis struct {
	name        string
	useOrigDst  bool
	inspector   bool
	udp         bool
	dns         dnsTable
	chains      []*chain
	defaultChan *chain
}

type chain struct {
	name     string
	match    *listenerv3.FilterChainMatch
	tls      *tlsSpec // downstream TLS, nil for none
	tcp      *tcpv3.TcpProxy
	hcm      *routev3.RouteConfiguration
	listener string
}

type cluster struct {
	name      string
	kind      clusterv3.Cluster_DiscoveryType
	timeout   time.Duration
	family    clusterv3.Cluster_DnsLookupFamily
	endpoints []hostPort
	tls       *tlsSpec
	next      atomic.Uint64
}

type hostPort struct {
	host string
	port int
}

func (h hostPort) String() string { return net.JoinHostPort(h.host, strconv.Itoa(h.port)) }

func socketOf(a *corev3.Address) (*corev3.SocketAddress, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return nil, errors.New("address: only socket_address is implemented here")
	}
	if _, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue); !ok {
		return nil, errors.New("socket_address: port_value is required")
	}
	return sa, nil
}

func build(st xdsState) (*runtime, error) {
	rt := &runtime{listeners: map[string]*lis{}, virtual: map[netip.AddrPort]*lis{}, clusters: map[string]*cluster{}, binds: map[string]*lis{}}
	for name, c := range st.clusters {
		cl, err := buildCluster(c, st)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", name, err)
		}
		rt.clusters[name] = cl
	}
	for name, l := range st.listeners {
		li, err := buildListener(l, st)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", name, err)
		}
		rt.listeners[name] = li
		addrs := []*corev3.Address{l.GetAddress()}
		for _, a := range l.GetAdditionalAddresses() {
			addrs = append(addrs, a.GetAddress())
		}
		bind := l.GetBindToPort() == nil || l.GetBindToPort().GetValue()
		for _, a := range addrs {
			sa, err := socketOf(a)
			if err != nil {
				return nil, fmt.Errorf("listener %s: %w", name, err)
			}
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				return nil, fmt.Errorf("listener %s: address %q is not an IP address", name, sa.GetAddress())
			}
			ap := netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))
			udp := sa.GetProtocol() == corev3.SocketAddress_UDP
			if udp != li.udp {
				return nil, fmt.Errorf("listener %s: %s is %s but the listener is not", name, ap, sa.GetProtocol())
			}
			if !bind {
				if udp {
					return nil, fmt.Errorf("listener %s: bind_to_port false on UDP is not implemented", name)
				}
				rt.virtual[ap] = li
				continue
			}
			key := "tcp|" + ap.String()
			if udp {
				key = "udp|" + ap.String()
			}
			if prev := rt.binds[key]; prev != nil {
				return nil, fmt.Errorf("listener %s: %s is also listener %s's", name, ap, prev.name)
			}
			rt.binds[key] = li
		}
	}
	return rt, nil
}

func buildListener(l *listenerv3.Listener, st xdsState) (*lis, error) {
	li := &lis{name: l.GetName(), useOrigDst: l.GetUseOriginalDst().GetValue()}
	sa, err := socketOf(l.GetAddress())
	if err != nil {
		return nil, err
	}
	li.udp = sa.GetProtocol() == corev3.SocketAddress_UDP
	for i, f := range l.GetListenerFilters() {
		switch f.GetTypedConfig().GetTypeUrl() {
		case "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector":
			li.inspector = true
		case "type.googleapis.com/envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig":
			if !li.udp {
				return nil, fmt.Errorf("listener_filters[%d]: dns_filter on a TCP listener", i)
			}
			var cfg dnsfilterv3.DnsFilterConfig
			if err := f.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
				return nil, err
			}
			if cfg.GetServerConfig().GetInlineDnsTable() == nil {
				return nil, fmt.Errorf("listener_filters[%d]: dns_filter without inline_dns_table is not implemented", i)
			}
			li.dns = newDNSTable(cfg.GetServerConfig().GetInlineDnsTable())
		default:
			return nil, fmt.Errorf("listener_filters[%d]: %s not implemented", i, f.GetTypedConfig().GetTypeUrl())
		}
	}
	if li.udp {
		if li.dns == nil || len(l.GetFilterChains()) > 0 {
			return nil, errors.New("a UDP listener is implemented only as a dns_filter without filter chains")
		}
		return li, nil
	}
	for i, fc := range l.GetFilterChains() {
		c, err := buildChain(fc, st, li.name)
		if err != nil {
			return nil, fmt.Errorf("filter_chains[%d]: %w", i, err)
		}
		if (len(fc.GetFilterChainMatch().GetServerNames()) > 0 || fc.GetFilterChainMatch().GetTransportProtocol() != "") && !li.inspector {
			return nil, fmt.Errorf("filter_chains[%d]: server_names or transport_protocol need the tls_inspector listener filter", i)
		}
		li.chains = append(li.chains, c)
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		c, err := buildChain(fc, st, li.name)
		if err != nil {
			return nil, fmt.Errorf("default_filter_chain: %w", err)
		}
		li.defaultChan = c
	}
	if len(li.chains) == 0 && li.defaultChan == nil {
		return nil, errors.New("no filter chains")
	}
	return li, nil
}

func buildChain(fc *listenerv3.FilterChain, st xdsState, listener string) (*chain, error) {
	c := &chain{name: fc.GetName(), match: fc.GetFilterChainMatch(), listener: listener}
	if len(fc.GetFilters()) != 1 {
		return nil, fmt.Errorf("%d network filters: exactly one is implemented", len(fc.GetFilters()))
	}
	f := fc.GetFilters()[0]
	switch f.GetTypedConfig().GetTypeUrl() {
	case "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":
		c.tcp = &tcpv3.TcpProxy{}
		if err := f.GetTypedConfig().UnmarshalTo(c.tcp); err != nil {
			return nil, err
		}
	case "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
		m := &hcmv3.HttpConnectionManager{}
		if err := f.GetTypedConfig().UnmarshalTo(m); err != nil {
			return nil, err
		}
		if m.GetCodecType() != hcmv3.HttpConnectionManager_AUTO {
			return nil, fmt.Errorf("http_connection_manager.codec_type %s not implemented", m.GetCodecType())
		}
		for i, hf := range m.GetHttpFilters() {
			if hf.GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" {
				return nil, fmt.Errorf("http_filters[%d]: %s not implemented", i, hf.GetTypedConfig().GetTypeUrl())
			}
		}
		if m.GetRouteConfig() == nil {
			return nil, errors.New("http_connection_manager: only an inline route_config is implemented")
		}
		c.hcm = m.GetRouteConfig()
	default:
		return nil, fmt.Errorf("filter %s not implemented", f.GetTypedConfig().GetTypeUrl())
	}
	if ts := fc.GetTransportSocket(); ts != nil {
		d := &tlsv3.DownstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(d); err != nil {
			return nil, fmt.Errorf("transport_socket: %s not implemented", ts.GetTypedConfig().GetTypeUrl())
		}
		c.tls = buildTLS(d.GetCommonTlsContext(), st.secrets)
		c.tls.required = d.GetRequireClientCertificate().GetValue()
		if c.tls.err == nil && len(c.tls.certs) == 0 {
			return nil, errors.New("transport_socket: DownstreamTlsContext without a certificate")
		}
	}
	return c, nil
}

func buildCluster(c *clusterv3.Cluster, st xdsState) (*cluster, error) {
	cl := &cluster{name: c.GetName(), kind: c.GetType(), timeout: c.GetConnectTimeout().AsDuration(), family: c.GetDnsLookupFamily()}
	if cl.timeout == 0 {
		cl.timeout = 5 * time.Second
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
	case clusterv3.Cluster_CLUSTER_PROVIDED:
		if cl.kind != clusterv3.Cluster_ORIGINAL_DST {
			return nil, errors.New("lb_policy CLUSTER_PROVIDED is for ORIGINAL_DST clusters")
		}
	default:
		return nil, fmt.Errorf("lb_policy %s not implemented", c.GetLbPolicy())
	}
	cla := c.GetLoadAssignment()
	switch cl.kind {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
	case clusterv3.Cluster_ORIGINAL_DST:
		if cla != nil && len(cla.GetEndpoints()) > 0 {
			return nil, errors.New("ORIGINAL_DST with endpoints")
		}
	case clusterv3.Cluster_EDS:
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		if c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
			return nil, errors.New("eds_cluster_config: only eds_config.ads is implemented")
		}
		cla = st.cla[name] // nil until received: no endpoints, as Envoy warming
	default:
		return nil, fmt.Errorf("type %s not implemented", cl.kind)
	}
	for _, loc := range cla.GetEndpoints() {
		for _, e := range loc.GetLbEndpoints() {
			sa, err := socketOf(e.GetEndpoint().GetAddress())
			if err != nil {
				return nil, err
			}
			if _, err := netip.ParseAddr(sa.GetAddress()); err != nil && (cl.kind == clusterv3.Cluster_STATIC || cl.kind == clusterv3.Cluster_EDS) {
				return nil, fmt.Errorf("endpoint %q is not an IP address (type %s)", sa.GetAddress(), cl.kind)
			}
			cl.endpoints = append(cl.endpoints, hostPort{host: sa.GetAddress(), port: int(sa.GetPortValue())})
		}
	}
	for k, a := range c.GetTypedExtensionProtocolOptions() {
		if k != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
			return nil, fmt.Errorf("typed_extension_protocol_options[%s] not implemented", k)
		}
		o := &httpv3.HttpProtocolOptions{}
		if err := a.UnmarshalTo(o); err != nil {
			return nil, err
		}
		if o.GetExplicitHttpConfig().GetHttpProtocolOptions() == nil {
			return nil, fmt.Errorf("typed_extension_protocol_options[%s]: only explicit HTTP/1.1 is implemented", k)
		}
	}
	if ts := c.GetTransportSocket(); ts != nil {
		if ts.GetName() != wellknown.TransportSocketTLS && ts.GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" {
			return nil, fmt.Errorf("transport_socket %s not implemented", ts.GetName())
		}
		u := &tlsv3.UpstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(u); err != nil {
			return nil, fmt.Errorf("transport_socket: %w", err)
		}
		cl.tls = buildTLS(u.GetCommonTlsContext(), st.secrets)
		cl.tls.sni = u.GetSni()
		cl.tls.reneg = u.GetAllowRenegotiation()
	}
	return cl, nil
}

// pickWeighted chooses a name by weight, as Envoy's weighted clusters.
func pickWeighted(names []string, weights []uint32) string {
	var total uint64
	for _, w := range weights {
		total += uint64(w)
	}
	if total == 0 {
		return names[0]
	}
	r := rand.Uint64N(total)
	for i, w := range weights {
		if r < uint64(w) {
			return names[i]
		}
		r -= uint64(w)
	}
	return names[len(names)-1]
}

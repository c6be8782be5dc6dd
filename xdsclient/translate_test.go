package xdsclient

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnstablev3 "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/shunt-dev/shunt/mesh"
)

type domain struct {
	name  string
	addrs []string
}

func dnsListener(t testing.TB, name string, domains ...domain) *listenerv3.Listener {
	t.Helper()
	var vds []*dnstablev3.DnsTable_DnsVirtualDomain
	for _, d := range domains {
		vds = append(vds, &dnstablev3.DnsTable_DnsVirtualDomain{
			Name: d.name,
			Endpoint: &dnstablev3.DnsTable_DnsEndpoint{EndpointConfig: &dnstablev3.DnsTable_DnsEndpoint_AddressList{
				AddressList: &dnstablev3.DnsTable_AddressList{Address: d.addrs},
			}},
		})
	}
	cfg := &dnsfilterv3.DnsFilterConfig{
		StatPrefix: "dns",
		ServerConfig: &dnsfilterv3.DnsFilterConfig_ServerContextConfig{
			ConfigSource: &dnsfilterv3.DnsFilterConfig_ServerContextConfig_InlineDnsTable{
				InlineDnsTable: &dnstablev3.DnsTable{VirtualDomains: vds},
			},
		},
	}
	a, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name:              name,
		Address:           sockAddr("127.0.0.1", 15054, corev3.SocketAddress_UDP),
		UdpListenerConfig: &listenerv3.UdpListenerConfig{},
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       DNSFilterName,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: a},
		}},
	}
}

func sockAddr(host string, port uint32, proto corev3.SocketAddress_Protocol) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol: proto, Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func assignment(name string, hostports ...string) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	loc := &endpointv3.LocalityLbEndpoints{}
	for _, hp := range hostports {
		i := strings.LastIndex(hp, ":")
		var port uint32
		for _, ch := range hp[i+1:] {
			port = port*10 + uint32(ch-'0')
		}
		host := strings.Trim(hp[:i], "[]")
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: sockAddr(host, port, corev3.SocketAddress_TCP)},
		}})
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{loc}
	return cla
}

func cluster(name string, typ clusterv3.Cluster_DiscoveryType, hostports ...string) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(time.Second),
	}
	switch typ {
	case clusterv3.Cluster_ORIGINAL_DST:
		c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
	case clusterv3.Cluster_EDS:
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig:   &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
			ServiceName: name + "-svc",
		}
	default:
		c.LoadAssignment = assignment(name, hostports...)
	}
	return c
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func prefixesOf(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func addrPorts(s ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(s))
	for i, p := range s {
		out[i] = netip.MustParseAddrPort(p)
	}
	return out
}

func TestTranslate(t *testing.T) {
	tests := []struct {
		name      string
		listeners []*listenerv3.Listener
		clusters  []*clusterv3.Cluster
		endpoints []*endpointv3.ClusterLoadAssignment
		want      *mesh.AgentSnapshot
		wantErr   []string // substrings the error must contain
	}{
		{
			name: "dns table v4 v6 and wildcard, names normalised",
			listeners: []*listenerv3.Listener{
				{Name: "plain", Address: sockAddr("0.0.0.0", 80, corev3.SocketAddress_TCP)},
				dnsListener(t, "shunt:dns",
					domain{"HTTPBIN.mesh.", []string{"240.0.0.1", "fd00:fd00::1"}},
					domain{"*.Example.com", []string{"240.0.0.2"}},
					domain{"httpbin.org", []string{"::ffff:240.0.0.3"}},
				),
			},
			want: &mesh.AgentSnapshot{Names: map[string][]netip.Addr{
				"httpbin.mesh":  addrs("240.0.0.1", "fd00:fd00::1"),
				"*.example.com": addrs("240.0.0.2"),
				// IPv4-mapped stays IPv6: it is answered as AAAA.
				"httpbin.org": addrs("::ffff:240.0.0.3"),
			}},
		},
		{
			name: "two dns listeners merge without duplicates",
			listeners: []*listenerv3.Listener{
				dnsListener(t, "a", domain{"x.mesh", []string{"240.0.0.1"}}),
				dnsListener(t, "b", domain{"x.mesh", []string{"240.0.0.1", "240.0.0.9"}}, domain{"y.mesh", []string{"240.0.0.2"}}),
			},
			want: &mesh.AgentSnapshot{Names: map[string][]netip.Addr{
				"x.mesh": addrs("240.0.0.1", "240.0.0.9"),
				"y.mesh": addrs("240.0.0.2"),
			}},
		},
		{
			name:     "passthrough on",
			clusters: []*clusterv3.Cluster{cluster("outbound:passthrough", clusterv3.Cluster_ORIGINAL_DST)},
			want:     &mesh.AgentSnapshot{Names: map[string][]netip.Addr{}, Passthrough: true},
		},
		{
			name:     "passthrough off: a blackhole is not passthrough",
			clusters: []*clusterv3.Cluster{cluster("outbound:blackhole", clusterv3.Cluster_STATIC)},
			want:     &mesh.AgentSnapshot{Names: map[string][]netip.Addr{}},
		},
		{
			name: "static, EDS and DNS clusters",
			clusters: []*clusterv3.Cluster{
				cluster("external:ip", clusterv3.Cluster_STATIC, "192.0.2.1:443", "[2001:db8::1]:443", "192.0.2.1:80"),
				cluster("egress", clusterv3.Cluster_EDS),
				cluster("eds-unanswered", clusterv3.Cluster_EDS),
				cluster("external:httpbin", clusterv3.Cluster_LOGICAL_DNS, "HTTPbin.org.:443"),
				cluster("external:zoned", clusterv3.Cluster_STRICT_DNS, "zone-1.httpbin.org:80", "198.51.100.7:80"),
			},
			endpoints: []*endpointv3.ClusterLoadAssignment{
				assignment("egress-svc", "192.0.2.10:10002"),
				assignment("not-used", "203.0.113.1:1"),
			},
			want: &mesh.AgentSnapshot{
				Names: map[string][]netip.Addr{},
				// Each endpoint with its port: the same address on two
				// ports is two endpoints.
				AllowedEndpoints: addrPorts("192.0.2.1:80", "192.0.2.1:443", "192.0.2.10:10002", "198.51.100.7:80", "[2001:db8::1]:443"),
				DNSHosts:         []mesh.DNSHost{{Host: "httpbin.org", Port: 443}, {Host: "zone-1.httpbin.org", Port: 80}},
			},
		},
		{
			name:      "bad VIP in the dns table",
			listeners: []*listenerv3.Listener{dnsListener(t, "shunt:dns", domain{"httpbin.mesh", []string{"240.0.0.1", "not-an-ip"}})},
			wantErr:   []string{"listener shunt:dns", "dns_filter config", `invalid address "not-an-ip" for name httpbin.mesh`},
		},
		{
			name:      "VIP too short for the proto's own rules",
			listeners: []*listenerv3.Listener{dnsListener(t, "shunt:dns", domain{"httpbin.mesh", []string{"x"}})},
			wantErr:   []string{"listener shunt:dns", "dns_filter config", "AddressList.Address[0]"},
		},
		{
			name:      "empty name in the dns table",
			listeners: []*listenerv3.Listener{dnsListener(t, "shunt:dns", domain{".", []string{"240.0.0.1"}})},
			wantErr:   []string{"listener shunt:dns", "invalid name"},
		},
		{
			name: "dns filter config of the wrong type",
			listeners: []*listenerv3.Listener{func() *listenerv3.Listener {
				l := dnsListener(t, "shunt:dns")
				l.ListenerFilters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
				return l
			}()},
			wantErr: []string{"listener shunt:dns", "dns_filter config"},
		},
		{
			name:      "listener failing proto validation",
			listeners: []*listenerv3.Listener{{Name: "l", ListenerFilters: []*listenerv3.ListenerFilter{{Name: ""}}}},
			wantErr:   []string{"listener l", "ListenerFilters[0]", "ListenerFilter.Name"},
		},
		{
			name: "cluster failing proto validation",
			clusters: []*clusterv3.Cluster{func() *clusterv3.Cluster {
				c := cluster("external:bad", clusterv3.Cluster_STATIC, "192.0.2.1:443")
				c.ConnectTimeout = durationpb.New(-time.Second)
				return c
			}()},
			wantErr: []string{"cluster external:bad", "ConnectTimeout"},
		},
		{
			name:     "hostname in a STATIC cluster",
			clusters: []*clusterv3.Cluster{cluster("external:bad", clusterv3.Cluster_STATIC, "httpbin.org:443")},
			wantErr:  []string{"cluster external:bad", `endpoint address "httpbin.org" is not an IP address`},
		},
		{
			name:      "hostname in an EDS assignment",
			clusters:  []*clusterv3.Cluster{cluster("egress", clusterv3.Cluster_EDS)},
			endpoints: []*endpointv3.ClusterLoadAssignment{assignment("egress-svc", "egress.example:1")},
			wantErr:   []string{"cluster egress", "EDS service egress-svc", `"egress.example"`},
		},
		{
			name:      "assignment failing proto validation",
			endpoints: []*endpointv3.ClusterLoadAssignment{{ClusterName: ""}},
			wantErr:   []string{"endpoints ", "ClusterName"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Translate(tc.listeners, tc.clusters, tc.endpoints)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, snapshot %+v", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// Package bootstrap builds the Envoy v3 bootstrap shunt gives the proxy it
// runs: ADS over gRPC (state of the world, resource API v3, listeners and
// clusters from ADS) to the control plane the agent follows, the same node
// identity, and an admin endpoint on loopback only. It is a plain Envoy
// bootstrap, so any program that speaks Envoy's contract can be started with
// it.
package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"
)

// ADSCluster is the name of the static cluster that reaches the control
// plane (Kuma and Istio use the same name).
const ADSCluster = "ads_cluster"

// DefaultAdmin is Envoy's customary admin address.
var DefaultAdmin = netip.MustParseAddrPort("127.0.0.1:9901")

// Config describes the proxy's node and where its control plane is.
type Config struct {
	// NodeID, Cluster and Zone identify the node exactly as the agent
	// identifies itself: a control plane keys its answer on them.
	NodeID, Cluster, Zone string
	// Metadata is the node metadata, as the agent sends it (nil: none).
	Metadata *structpb.Struct

	// XDS is the control plane (or shunt's local xDS proxy).
	XDS XDS

	// Admin is Envoy's admin address; it must be a loopback address, since
	// the admin API reconfigures and stops the proxy. Port 0 lets Envoy
	// pick one (read it from --admin-address-path).
	Admin netip.AddrPort
}

// XDS is where Envoy opens its ADS stream: exactly one of Pipe and Address.
type XDS struct {
	// Pipe is the path of a Unix socket (shunt's local xDS proxy).
	Pipe string
	// Address is HOST:PORT of a control plane over TCP.
	Address string
	// TLS, with Address, protects the connection (nil: plaintext).
	TLS *TLS
	// Authorization, when set, is sent as the "authorization" initial
	// metadata of the ADS stream: the header value the agent sends (a
	// dataplane token).
	Authorization string
	// ConnectTimeout of the ADS cluster (default 1s).
	ConnectTimeout time.Duration
}

// TLS is the client side of TLS to the control plane, by file name: Envoy
// reads the files itself, so they must be readable by the proxy's user.
type TLS struct {
	// CAFile verifies the server; empty: the system's roots.
	CAFile string
	// CertFile and KeyFile, both or neither, are the client certificate.
	CertFile, KeyFile string
	// ServerName is sent as SNI and required in the server's certificate
	// (default: the host of Address).
	ServerName string
}

// Build returns the bootstrap for c, validated as Envoy would.
func Build(c Config) (*bootstrapv3.Bootstrap, error) {
	if c.NodeID == "" {
		return nil, errors.New("bootstrap: node id is empty")
	}
	if !c.Admin.IsValid() {
		c.Admin = DefaultAdmin
	}
	if !c.Admin.Addr().IsLoopback() {
		return nil, fmt.Errorf("bootstrap: admin address %s: must be on loopback (the admin API can reconfigure and stop the proxy)", c.Admin)
	}
	ads, err := adsCluster(c.XDS)
	if err != nil {
		return nil, err
	}
	node := &corev3.Node{Id: c.NodeID, Cluster: c.Cluster, Metadata: c.Metadata}
	if c.Zone != "" {
		node.Locality = &corev3.Locality{Zone: c.Zone}
	}
	grpcService := &corev3.GrpcService{
		TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ADSCluster}},
	}
	if c.XDS.Authorization != "" {
		grpcService.InitialMetadata = []*corev3.HeaderValue{{Key: "authorization", Value: c.XDS.Authorization}}
	}
	fromADS := func() *corev3.ConfigSource {
		return &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
		}
	}
	b := &bootstrapv3.Bootstrap{
		Node: node,
		Admin: &bootstrapv3.Admin{
			Address: socketAddress(c.Admin.Addr().String(), uint32(c.Admin.Port())),
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices:        []*corev3.GrpcService{grpcService},
				// The node goes on the first request only, as the
				// agent's client does.
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: fromADS(),
			CdsConfig: fromADS(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{ads},
		},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: invalid: %w", err)
	}
	return b, nil
}

func adsCluster(x XDS) (*clusterv3.Cluster, error) {
	if (x.Pipe == "") == (x.Address == "") {
		return nil, errors.New("bootstrap: give exactly one xDS target: a Unix socket path or HOST:PORT")
	}
	timeout := x.ConnectTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	h2, err := anypb.New(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("bootstrap: http2 options: %w", err)
	}
	c := &clusterv3.Cluster{
		Name:                 ADSCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(timeout),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2,
		},
	}
	var addr *corev3.Address
	if x.Pipe != "" {
		if !filepath.IsAbs(x.Pipe) {
			return nil, fmt.Errorf("bootstrap: xDS socket %q: must be an absolute path", x.Pipe)
		}
		if x.TLS != nil {
			return nil, fmt.Errorf("bootstrap: xDS socket %s: TLS applies to a TCP control plane only", x.Pipe)
		}
		addr = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: x.Pipe}}}
	} else {
		host, portS, err := net.SplitHostPort(x.Address)
		if err != nil || host == "" {
			return nil, fmt.Errorf("bootstrap: xDS address %q: not HOST:PORT", x.Address)
		}
		port, err := strconv.ParseUint(portS, 10, 16)
		if err != nil || port == 0 {
			return nil, fmt.Errorf("bootstrap: xDS address %q: invalid port %q", x.Address, portS)
		}
		if _, err := netip.ParseAddr(host); err != nil {
			// A name: Envoy resolves it, and again when it changes.
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		}
		addr = socketAddress(host, uint32(port))
		c.UpstreamConnectionOptions = &clusterv3.UpstreamConnectionOptions{
			// A control plane that vanished behind a NAT or a dead
			// peer is noticed without waiting for the OS default.
			TcpKeepalive: &corev3.TcpKeepalive{},
		}
		if x.TLS != nil {
			ts, err := transportSocket(host, *x.TLS)
			if err != nil {
				return nil, err
			}
			c.TransportSocket = ts
		}
	}
	c.LoadAssignment = &endpointv3.ClusterLoadAssignment{
		ClusterName: ADSCluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}},
			}},
		}},
	}
	return c, nil
}

// transportSocket verifies the control plane as the agent's Go client does:
// against the CA (or the system roots) and for the server name.
func transportSocket(host string, t TLS) (*corev3.TransportSocket, error) {
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("bootstrap: xDS client certificate and key must be given together")
	}
	for _, f := range []struct{ name, path string }{{"CA", t.CAFile}, {"client certificate", t.CertFile}, {"client key", t.KeyFile}} {
		if f.path != "" && !filepath.IsAbs(f.path) {
			return nil, fmt.Errorf("bootstrap: xDS %s file %q: must be an absolute path (Envoy does not run in shunt's directory)", f.name, f.path)
		}
	}
	name := t.ServerName
	if name == "" {
		name = host
	}
	san := &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_DNS,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: name}},
	}
	if _, err := netip.ParseAddr(name); err == nil {
		san.SanType = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
	}
	vc := &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san}}
	if t.CAFile != "" {
		vc.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.CAFile}}
	} else {
		vc.SystemRootCerts = &tlsv3.CertificateValidationContext_SystemRootCerts{}
	}
	common := &tlsv3.CommonTlsContext{
		TlsParams:             &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
		// gRPC needs HTTP/2 negotiated by ALPN.
		AlpnProtocols: []string{"h2"},
	}
	if t.CertFile != "" {
		common.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.CertFile}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.KeyFile}},
		}}
	}
	utc := &tlsv3.UpstreamTlsContext{CommonTlsContext: common}
	if _, err := netip.ParseAddr(name); err != nil {
		utc.Sni = name // SNI carries names, never addresses (RFC 6066)
	}
	anyTLS, err := anypb.New(utc)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: TLS context: %w", err)
	}
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: anyTLS},
	}, nil
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// JSON is b as indented JSON with proto field names. protojson varies its
// whitespace on purpose; re-indenting makes the output stable, so it can be
// compared and diffed.
func JSON(b *bootstrapv3.Bootstrap) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: marshal: %w", err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return nil, fmt.Errorf("bootstrap: indent: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// YAML is b as YAML (keys sorted), which Envoy reads from a .yaml file.
func YAML(b *bootstrapv3.Bootstrap) ([]byte, error) {
	j, err := JSON(b)
	if err != nil {
		return nil, err
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: YAML: %w", err)
	}
	return y, nil
}

// Parse reads a bootstrap as Envoy does: JSON (YAML is JSON's superset
// here), refusing any field the v3 API does not define, then validated.
func Parse(data []byte) (*bootstrapv3.Bootstrap, error) {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: parse: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(j, b); err != nil {
		return nil, fmt.Errorf("bootstrap: parse: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: invalid: %w", err)
	}
	return b, nil
}

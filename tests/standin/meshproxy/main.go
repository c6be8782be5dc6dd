// Command meshproxy is a test double for Envoy in shunt's end-to-end tests,
// never shipped. It subscribes to a control plane over ADS like the
// sidecar would and forwards each captured connection by its original
// destination: a route VIP:port goes to the route's cluster (TLS
// originated per the cluster's UpstreamTlsContext), anything else to the
// original destination when an ORIGINAL_DST cluster exists, else nowhere.
//
// With -egress it is instead a ZoneEgress stand-in: each connection starts
// with a line "shunt-egress HOST:PORT" naming the real destination.
//
// Every connection is logged as "conn orig=... cluster=... upstream=...
// tls=..." so that tests can prove a connection really went through it.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/shunt-dev/shunt/redirect/origdst"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

func main() {
	xds := flag.String("xds", "", "ADS server HOST:PORT, or unix:///PATH of shunt's xDS socket")
	nodeID := flag.String("node-id", "", "node id")
	zone := flag.String("zone", "", "zone (locality)")
	listen := flag.String("listen", "127.0.0.1:15001,[::1]:15001", "outbound capture addresses, comma-separated")
	resolver := flag.String("resolver", "", "DNS server IP:PORT for DNS-resolved clusters")
	egress := flag.String("egress", "", "run as a ZoneEgress stand-in on this address instead")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p := &proxy{res: resolverFor(*resolver)}
	if *egress != "" {
		if err := p.serve(ctx, *egress, p.egress); err != nil {
			log.Fatal(err)
		}
		return
	}
	go p.subscribe(ctx, *xds, *nodeID, *zone)
	addrs := strings.Split(*listen, ",")
	errs := make(chan error, len(addrs))
	for _, a := range addrs {
		go func(a string) { errs <- p.serve(ctx, a, p.outbound) }(a)
	}
	for range addrs {
		if err := <-errs; err != nil {
			log.Fatal(err)
		}
	}
}

type route struct{ cluster string }

type cluster struct {
	name        string
	originalDst bool
	endpoints   []string // host:port
	tls         *tls.Config
	sni         string
	viaEgress   bool
	address     string // the ExternalService's real address
}

type config struct {
	routes      map[netip.AddrPort]route
	clusters    map[string]*cluster
	passthrough bool
}

type proxy struct {
	res *net.Resolver
	cfg atomic.Pointer[config]
}

func resolverFor(addr string) *net.Resolver {
	if addr == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

func (p *proxy) serve(ctx context.Context, addr string, handle func(*net.TCPConn)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Printf("listening on %s", ln.Addr())
	go func() { <-ctx.Done(); _ = ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go handle(c.(*net.TCPConn))
	}
}

func (p *proxy) outbound(c *net.TCPConn) {
	defer c.Close()
	orig, err := origdst.Lookup(c)
	if err != nil {
		log.Printf("conn original destination unknown: %v", err)
		return
	}
	orig = netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port())
	cfg := p.cfg.Load()
	if cfg == nil {
		log.Printf("conn orig=%s refused: no configuration yet", orig)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r, ok := cfg.routes[orig]; ok {
		cl := cfg.clusters[r.cluster]
		if cl == nil {
			log.Printf("conn orig=%s cluster=%s refused: unknown cluster", orig, r.cluster)
			return
		}
		up, desc, err := p.dialCluster(ctx, cl)
		if err != nil {
			log.Printf("conn orig=%s cluster=%s failed: %v", orig, cl.name, err)
			return
		}
		log.Printf("conn orig=%s cluster=%s %s", orig, cl.name, desc)
		splice(c, up)
		return
	}
	if !cfg.passthrough {
		log.Printf("conn orig=%s refused: no route and no passthrough", orig)
		return
	}
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", orig.String())
	if err != nil {
		log.Printf("conn orig=%s cluster=passthrough failed: %v", orig, err)
		return
	}
	log.Printf("conn orig=%s cluster=passthrough upstream=%s", orig, orig)
	splice(c, up)
}

func (p *proxy) dialCluster(ctx context.Context, cl *cluster) (net.Conn, string, error) {
	if len(cl.endpoints) == 0 {
		return nil, "", errors.New("no endpoints")
	}
	host, port, _ := net.SplitHostPort(cl.endpoints[0])
	ip := host
	if _, err := netip.ParseAddr(host); err != nil {
		addrs, err := p.res.LookupNetIP(ctx, "ip4", host)
		if err != nil || len(addrs) == 0 {
			return nil, "", fmt.Errorf("resolve %s: %v", host, err)
		}
		ip = addrs[0].String()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, port))
	if err != nil {
		return nil, "", err
	}
	desc := "upstream=" + net.JoinHostPort(ip, port)
	if cl.viaEgress {
		if _, err := fmt.Fprintf(conn, "shunt-egress %s\n", cl.address); err != nil {
			conn.Close()
			return nil, "", err
		}
		desc += " via-egress=" + cl.address
	}
	if cl.tls == nil {
		return conn, desc + " tls=none", nil
	}
	tc := tls.Client(conn, cl.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, "", fmt.Errorf("TLS to %s (sni %q): %w", cl.endpoints[0], cl.sni, err)
	}
	return tc, desc + " tls=sni:" + cl.sni, nil
}

func (p *proxy) egress(c *net.TCPConn) {
	defer c.Close()
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "shunt-egress ") {
		log.Printf("egress: bad preamble %q: %v", line, err)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	dst := strings.TrimSpace(strings.TrimPrefix(line, "shunt-egress "))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	host, port, _ := net.SplitHostPort(dst)
	ip := host
	if _, err := netip.ParseAddr(host); err != nil {
		addrs, err := p.res.LookupNetIP(ctx, "ip4", host)
		if err != nil || len(addrs) == 0 {
			log.Printf("egress %s: resolve: %v", dst, err)
			return
		}
		ip = addrs[0].String()
	}
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, port))
	if err != nil {
		log.Printf("egress %s: %v", dst, err)
		return
	}
	log.Printf("egress from=%s to=%s upstream=%s", c.RemoteAddr(), dst, net.JoinHostPort(ip, port))
	splice(&bufConn{Conn: c, r: br}, up)
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func splice(a, b net.Conn) {
	defer b.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}

// subscribe keeps an ADS stream open, ACKing every response, and rebuilds
// the configuration from the latest listeners and clusters.
func (p *proxy) subscribe(ctx context.Context, server, nodeID, zone string) {
	for ctx.Err() == nil {
		if err := p.stream(ctx, server, nodeID, zone); err != nil && ctx.Err() == nil {
			log.Printf("xds: %v; reconnecting", err)
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func (p *proxy) stream(ctx context.Context, server, nodeID, zone string) error {
	cc, err := grpc.NewClient(server, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	node := &corev3.Node{Id: nodeID, Locality: &corev3.Locality{Zone: zone}}
	for _, tu := range []string{resource.ClusterType, resource.ListenerType} {
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: tu}); err != nil {
			return err
		}
	}
	var listeners []*listenerv3.Listener
	var clusters []*clusterv3.Cluster
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		switch resp.TypeUrl {
		case resource.ListenerType:
			listeners = nil
			for _, a := range resp.Resources {
				l := &listenerv3.Listener{}
				if err := a.UnmarshalTo(l); err == nil {
					listeners = append(listeners, l)
				}
			}
		case resource.ClusterType:
			clusters = nil
			for _, a := range resp.Resources {
				c := &clusterv3.Cluster{}
				if err := a.UnmarshalTo(c); err == nil {
					clusters = append(clusters, c)
				}
			}
		}
		cfg := build(listeners, clusters)
		p.cfg.Store(cfg)
		log.Printf("xds: version %s of %s: %d routes, %d clusters, passthrough=%v", resp.VersionInfo, resp.TypeUrl, len(cfg.routes), len(cfg.clusters), cfg.passthrough)
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
	}
}

func build(listeners []*listenerv3.Listener, clusters []*clusterv3.Cluster) *config {
	cfg := &config{routes: map[netip.AddrPort]route{}, clusters: map[string]*cluster{}}
	for _, c := range clusters {
		cl := &cluster{name: c.Name}
		if c.GetType() == clusterv3.Cluster_ORIGINAL_DST {
			cl.originalDst = true
			cfg.passthrough = true
		}
		for _, lle := range c.GetLoadAssignment().GetEndpoints() {
			for _, e := range lle.LbEndpoints {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				if sa != nil {
					cl.endpoints = append(cl.endpoints, net.JoinHostPort(sa.Address, strconv.Itoa(int(sa.GetPortValue()))))
				}
			}
		}
		if md := c.GetMetadata().GetFilterMetadata()["shunt"]; md != nil {
			cl.viaEgress = md.Fields["via_zone_egress"].GetBoolValue()
			cl.address = fieldString(md, "address")
		}
		if ts := c.GetTransportSocket(); ts != nil {
			utc := &tlsv3.UpstreamTlsContext{}
			if err := ts.GetTypedConfig().UnmarshalTo(utc); err == nil {
				cl.tls, cl.sni = tlsConfig(utc)
			}
		}
		cfg.clusters[c.Name] = cl
	}
	for _, l := range listeners {
		name := clusterOf(l)
		if name == "" || l.GetBindToPort() == nil || l.GetBindToPort().GetValue() {
			continue
		}
		addrs := []*corev3.Address{l.Address}
		for _, a := range l.AdditionalAddresses {
			addrs = append(addrs, a.Address)
		}
		for _, a := range addrs {
			sa := a.GetSocketAddress()
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				continue
			}
			cfg.routes[netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))] = route{cluster: name}
		}
	}
	return cfg
}

func fieldString(s *structpb.Struct, k string) string {
	if v, ok := s.Fields[k]; ok {
		return v.GetStringValue()
	}
	return ""
}

// clusterOf is the (first) cluster a route listener leads to.
func clusterOf(l *listenerv3.Listener) string {
	for _, fc := range l.FilterChains {
		for _, f := range fc.Filters {
			tp := &tcpv3.TcpProxy{}
			if f.GetTypedConfig().UnmarshalTo(tp) == nil {
				if c := tp.GetCluster(); c != "" {
					return c
				}
				if w := tp.GetWeightedClusters(); w != nil && len(w.Clusters) > 0 {
					return w.Clusters[0].Name
				}
			}
			m := &hcmv3.HttpConnectionManager{}
			if f.GetTypedConfig().UnmarshalTo(m) == nil {
				for _, vh := range m.GetRouteConfig().GetVirtualHosts() {
					for _, r := range vh.Routes {
						if c := r.GetRoute().GetCluster(); c != "" {
							return c
						}
						if w := r.GetRoute().GetWeightedClusters(); w != nil && len(w.Clusters) > 0 {
							return w.Clusters[0].Name
						}
					}
				}
			}
		}
	}
	return ""
}

func tlsConfig(utc *tlsv3.UpstreamTlsContext) (*tls.Config, string) {
	cfg := &tls.Config{ServerName: utc.Sni, MinVersion: tls.VersionTLS12}
	common := utc.GetCommonTlsContext()
	cfg.NextProtos = common.GetAlpnProtocols()
	if vc := common.GetValidationContext(); vc != nil {
		var pem []byte
		switch {
		case len(vc.GetTrustedCa().GetInlineBytes()) > 0:
			pem = vc.GetTrustedCa().GetInlineBytes()
		case vc.GetTrustedCa().GetFilename() != "":
			pem, _ = os.ReadFile(vc.GetTrustedCa().GetFilename())
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg.RootCAs = pool
	} else {
		cfg.InsecureSkipVerify = true
	}
	for _, tc := range common.GetTlsCertificates() {
		cert, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
		if err == nil {
			cfg.Certificates = append(cfg.Certificates, cert)
		}
	}
	return cfg, utc.Sni
}

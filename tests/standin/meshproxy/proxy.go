package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

func (p *proxy) serveChain(rt *runtime, ch *chain, down net.Conn, dst netip.AddrPort, desc string) {
	switch {
	case ch.tcp != nil:
		name := ch.tcp.GetCluster()
		if w := ch.tcp.GetWeightedClusters(); w != nil {
			var names []string
			var weights []uint32
			for _, c := range w.GetClusters() {
				names = append(names, c.GetName())
				weights = append(weights, c.GetWeight())
			}
			name = pickWeighted(names, weights)
		}
		p.relay(rt, name, down, nil, dst, desc, "")
	case ch.hcm != nil:
		br := bufio.NewReader(down)
		req, err := http.ReadRequest(br)
		if err != nil {
			log.Printf("conn %s refused: not an HTTP/1.1 request: %v", desc, err)
			return
		}
		name, err := route(ch.hcm, req)
		if err != nil {
			log.Printf("conn %s host=%s refused: %v", desc, req.Host, err)
			_, _ = io.WriteString(down, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
			return
		}
		p.relay(rt, name, &readerConn{Conn: down, r: br}, req, dst, desc, " host="+req.Host)
	}
}

// route is the route table's choice for a request: the virtual host whose
// domains match the authority (exact, then *.suffix, prefix.*, then *),
// then the first route whose prefix matches the path.
func route(rc *routev3.RouteConfiguration, req *http.Request) (string, error) {
	host := strings.ToLower(req.Host)
	var vh *routev3.VirtualHost
	best := -1
	for _, v := range rc.GetVirtualHosts() {
		for _, d := range v.GetDomains() {
			d = strings.ToLower(d)
			rank := -1
			switch {
			case d == host || (!strings.Contains(d, ":") && d == hostOnly(host)):
				rank = 3 << 20
			case strings.HasPrefix(d, "*") && d != "*" && strings.HasSuffix(host, d[1:]):
				rank = 2<<20 + len(d)
			case strings.HasSuffix(d, "*") && d != "*" && strings.HasPrefix(host, d[:len(d)-1]):
				rank = 1<<20 + len(d)
			case d == "*":
				rank = 0
			}
			if rank > best {
				best, vh = rank, v
			}
		}
	}
	if vh == nil {
		return "", fmt.Errorf("no virtual host for authority %q", req.Host)
	}
	for _, r := range vh.GetRoutes() {
		if !strings.HasPrefix(req.URL.Path, r.GetMatch().GetPrefix()) {
			continue
		}
		a := r.GetRoute()
		if c := a.GetCluster(); c != "" {
			return c, nil
		}
		if w := a.GetWeightedClusters(); w != nil {
			var names []string
			var weights []uint32
			for _, c := range w.GetClusters() {
				names = append(names, c.GetName())
				weights = append(weights, c.GetWeight().GetValue())
			}
			return pickWeighted(names, weights), nil
		}
	}
	return "", fmt.Errorf("no route for path %q in virtual host %s", req.URL.Path, vh.GetName())
}

func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		return h[:i]
	}
	return h
}

// relay connects to the cluster and copies both ways; req, when set, is the
// HTTP request already read, written first.
func (p *proxy) relay(rt *runtime, name string, down net.Conn, req *http.Request, dst netip.AddrPort, desc, suffix string) {
	cl := rt.clusters[name]
	if cl == nil {
		log.Printf("conn %s cluster=%s refused: unknown cluster", desc, name)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cl.timeout)
	up, udesc, err := p.dialCluster(ctx, cl, dst)
	cancel()
	if err != nil {
		log.Printf("conn %s cluster=%s failed: %v", desc, name, err)
		return
	}
	log.Printf("conn %s cluster=%s %s%s", desc, name, udesc, suffix)
	if req != nil {
		if err := req.Write(up); err != nil {
			up.Close()
			return
		}
	}
	splice(down, up)
}

func (p *proxy) dialCluster(ctx context.Context, cl *cluster, orig netip.AddrPort) (net.Conn, string, error) {
	var target string
	switch cl.kind {
	case clusterv3.Cluster_ORIGINAL_DST:
		target = orig.String()
	default:
		if len(cl.endpoints) == 0 {
			return nil, "", errors.New("no healthy upstream (the cluster has no endpoints)")
		}
		ep := cl.endpoints[int(cl.next.Add(1)-1)%len(cl.endpoints)]
		ip := ep.host
		if _, err := netip.ParseAddr(ep.host); err != nil {
			a, err := p.resolve(ctx, ep.host, cl.family)
			if err != nil {
				return nil, "", err
			}
			ip = a.String()
		}
		target = net.JoinHostPort(ip, strconv.Itoa(ep.port))
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return nil, "", err
	}
	desc := "upstream=" + target
	if cl.tls == nil {
		return conn, desc + " tls=none", nil
	}
	if cl.tls.err != nil {
		conn.Close()
		return nil, "", cl.tls.err
	}
	tc := tls.Client(conn, cl.tls.clientConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, "", fmt.Errorf("TLS to %s (sni %q): %w", target, cl.tls.sni, err)
	}
	desc += " tls=sni:" + cl.tls.sni
	if cl.tls.roots != nil {
		desc += " verified=" + strings.Join(cl.tls.caNames, ",")
	}
	if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 && len(st.PeerCertificates[0].URIs) > 0 {
		desc += " peer=" + st.PeerCertificates[0].URIs[0].String()
	}
	return tc, desc, nil
}

// resolve follows the cluster's dns_lookup_family with the system resolver.
func (p *proxy) resolve(ctx context.Context, host string, fam clusterv3.Cluster_DnsLookupFamily) (netip.Addr, error) {
	order := []string{"ip4", "ip6"}
	switch fam {
	case clusterv3.Cluster_V4_ONLY:
		order = []string{"ip4"}
	case clusterv3.Cluster_V6_ONLY:
		order = []string{"ip6"}
	case clusterv3.Cluster_AUTO:
		order = []string{"ip6", "ip4"}
	}
	var last error
	for _, n := range order {
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, n, host)
		if err == nil && len(addrs) > 0 {
			return addrs[0].Unmap(), nil
		}
		last = err
	}
	return netip.Addr{}, fmt.Errorf("resolve %s: %v", host, last)
}

type readerConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *readerConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func splice(a, b net.Conn) {
	defer b.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		closeWrite(dst)
	}
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}

func closeWrite(c net.Conn) {
	switch x := c.(type) {
	case interface{ CloseWrite() error }:
		_ = x.CloseWrite()
	case *readerConn:
		closeWrite(x.Conn)
	default:
		_ = c.Close()
	}
}

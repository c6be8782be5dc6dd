package controlplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ListenPolicy says how `shunt controlplane` may serve on an address: the
// resources hold TLS private keys, so whoever reaches the port must prove
// which node it is.
type ListenPolicy struct {
	// TLS: the server has a certificate.
	TLS bool
	// ClientCerts: client certificates are required and verified, and
	// each names the node ids it may ask for.
	ClientCerts bool
	// AllowUnauthenticated is the explicit opt-out for a network the
	// operator trusts.
	AllowUnauthenticated bool
}

// CheckListen refuses to serve a non-loopback address to clients that are
// not authenticated: without client certificates any host that reaches the
// port could ask for any node's configuration, secrets included, and
// without TLS read them off the wire.
func CheckListen(addr string, p ListenPolicy) error {
	if p.ClientCerts || p.AllowUnauthenticated {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() || host == "localhost" {
		return nil
	}
	what := "without TLS"
	if p.TLS {
		what = "with TLS but without client certificates (--client-ca)"
	}
	return fmt.Errorf("listen address %q is not loopback and would be served %s: any host that reaches it could fetch every node's configuration, TLS private keys included; give --tls-cert, --tls-key and --client-ca, or --allow-unauthenticated to accept that", addr, what)
}

// peerNames returns the names the verified client certificate of the
// stream carries (subject common name, DNS and URI SANs); nil without one.
func peerNames(ctx context.Context) []string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	leaf := info.State.VerifiedChains[0][0]
	names := []string{}
	if leaf.Subject.CommonName != "" {
		names = append(names, leaf.Subject.CommonName)
	}
	names = append(names, leaf.DNSNames...)
	for _, u := range leaf.URIs {
		names = append(names, u.String())
	}
	return names
}

// checkIdentity refuses a node id the stream's client certificate does not
// name, when the server requires node identities.
func (s *Server) checkIdentity(names []string, nodeID string) error {
	if !s.opts.RequireNodeIdentity {
		return nil
	}
	if !slices.Contains(names, nodeID) {
		return status.Errorf(codes.PermissionDenied, "node id %q is not named by the client certificate (names %v)", nodeID, names)
	}
	return nil
}

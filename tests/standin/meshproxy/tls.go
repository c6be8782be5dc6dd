package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// tlsSpec is an Upstream/DownstreamTlsContext with its secrets resolved.
type tlsSpec struct {
	sni      string
	reneg    bool
	alpn     []string
	roots    *x509.CertPool // nil: the peer is not verified
	caNames  []string
	sans     []*tlsv3.SubjectAltNameMatcher
	certs    []tls.Certificate
	required bool // downstream: a client certificate is required
	// err is why the context cannot be used yet (a secret not received):
	// Envoy keeps such a listener or cluster warming; the double refuses
	// its connections with this error.
	err error
}

func dataSource(d *corev3.DataSource) ([]byte, error) {
	switch {
	case d == nil:
		return nil, nil
	case len(d.GetInlineBytes()) > 0:
		return d.GetInlineBytes(), nil
	case d.GetInlineString() != "":
		return []byte(d.GetInlineString()), nil
	case d.GetFilename() != "":
		b, err := os.ReadFile(d.GetFilename())
		if err != nil {
			return nil, fmt.Errorf("data source %s: %w", d.GetFilename(), err)
		}
		return b, nil
	}
	return nil, nil
}

func buildTLS(common *tlsv3.CommonTlsContext, secrets map[string]*tlsv3.Secret) *tlsSpec {
	s := &tlsSpec{alpn: common.GetAlpnProtocols()}
	var vcs []*tlsv3.CertificateValidationContext
	if vc := common.GetValidationContext(); vc != nil {
		vcs = append(vcs, vc)
	}
	if cv := common.GetCombinedValidationContext(); cv != nil {
		if d := cv.GetDefaultValidationContext(); d != nil {
			vcs = append(vcs, d)
		}
		if sc := cv.GetValidationContextSdsSecretConfig(); sc != nil {
			sec := secrets[sc.GetName()]
			if sec == nil || sec.GetValidationContext() == nil {
				s.err = fmt.Errorf("validation context secret %q not received yet", sc.GetName())
				return s
			}
			vcs = append(vcs, sec.GetValidationContext())
		}
	}
	for _, vc := range vcs {
		s.sans = append(s.sans, vc.GetMatchTypedSubjectAltNames()...)
		pemBytes, err := dataSource(vc.GetTrustedCa())
		if err != nil {
			s.err = err
			return s
		}
		if len(pemBytes) == 0 {
			continue
		}
		if s.roots == nil {
			s.roots = x509.NewCertPool()
		}
		for rest := pemBytes; ; {
			c, r, ok := nextCert(rest)
			if !ok {
				break
			}
			rest = r
			s.roots.AddCert(c)
			s.caNames = append(s.caNames, c.Subject.CommonName)
		}
	}
	if len(s.sans) > 0 && s.roots == nil {
		s.err = errors.New("subject alt name matchers without a trusted CA")
		return s
	}
	var pairs []*tlsv3.TlsCertificate
	pairs = append(pairs, common.GetTlsCertificates()...)
	for _, sc := range common.GetTlsCertificateSdsSecretConfigs() {
		sec := secrets[sc.GetName()]
		if sec == nil || sec.GetTlsCertificate() == nil {
			s.err = fmt.Errorf("certificate secret %q not received yet", sc.GetName())
			return s
		}
		pairs = append(pairs, sec.GetTlsCertificate())
	}
	for _, p := range pairs {
		chain, err := dataSource(p.GetCertificateChain())
		if err != nil {
			s.err = err
			return s
		}
		key, err := dataSource(p.GetPrivateKey())
		if err != nil {
			s.err = err
			return s
		}
		c, err := tls.X509KeyPair(chain, key)
		if err != nil {
			s.err = fmt.Errorf("certificate: %w", err)
			return s
		}
		s.certs = append(s.certs, c)
	}
	return s
}

// verify is Envoy's check of a peer: the chain ends at a trusted CA and, when
// matchers are given, one subject alt name matches one matcher.
func (s *tlsSpec) verify(raw [][]byte) error {
	if s.roots == nil {
		return nil
	}
	if len(raw) == 0 {
		return errors.New("peer sent no certificate")
	}
	var certs []*x509.Certificate
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("certificate verify failed: %w", err)
	}
	if len(s.sans) == 0 {
		return nil
	}
	for _, m := range s.sans {
		if sanMatches(certs[0], m) {
			return nil
		}
	}
	return fmt.Errorf("certificate SANs %v match none of the configured names", sanList(certs[0]))
}

func sanMatches(c *x509.Certificate, m *tlsv3.SubjectAltNameMatcher) bool {
	var names []string
	switch m.GetSanType() {
	case tlsv3.SubjectAltNameMatcher_DNS:
		names = c.DNSNames
	case tlsv3.SubjectAltNameMatcher_URI:
		for _, u := range c.URIs {
			names = append(names, u.String())
		}
	case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
		for _, ip := range c.IPAddresses {
			if a, ok := netip.AddrFromSlice(ip); ok {
				names = append(names, a.Unmap().String())
			}
		}
	}
	for _, n := range names {
		switch {
		case m.GetMatcher().GetExact() != "":
			if n == m.GetMatcher().GetExact() {
				return true
			}
		case m.GetMatcher().GetPrefix() != "":
			if strings.HasPrefix(n, m.GetMatcher().GetPrefix()) {
				return true
			}
		}
	}
	return false
}

func sanList(c *x509.Certificate) []string {
	out := append([]string{}, c.DNSNames...)
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

func (s *tlsSpec) clientConfig() *tls.Config {
	cfg := &tls.Config{
		ServerName:   s.sni,
		NextProtos:   s.alpn,
		Certificates: s.certs,
		MinVersion:   tls.VersionTLS12,
		// Envoy checks the chain and the configured names, not the SNI.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error { return s.verify(raw) },
	}
	if s.reneg {
		cfg.Renegotiation = tls.RenegotiateFreelyAsClient
	}
	if s.sni == "" {
		// Go sends no SNI for an empty ServerName, as Envoy.
		cfg.ServerName = ""
	}
	return cfg
}

func (s *tlsSpec) serverConfig() *tls.Config {
	cfg := &tls.Config{Certificates: s.certs, NextProtos: s.alpn, MinVersion: tls.VersionTLS12}
	switch {
	case s.required:
		cfg.ClientAuth = tls.RequireAnyClientCert
	case s.roots != nil:
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 && !s.required {
			return nil
		}
		return s.verify(raw)
	}
	return cfg
}

// peerIdentity names the client of a downstream TLS connection.
func peerIdentity(st tls.ConnectionState) string {
	if len(st.PeerCertificates) == 0 {
		return "none"
	}
	c := st.PeerCertificates[0]
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	return "CN=" + c.Subject.CommonName
}

func nextCert(b []byte) (*x509.Certificate, []byte, bool) {
	for {
		blk, rest := pemDecode(b)
		if blk == nil {
			return nil, nil, false
		}
		b = rest
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			continue
		}
		return c, rest, true
	}
}

var _ net.Conn = (*tls.Conn)(nil)

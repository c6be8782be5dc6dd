package controlplane

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func identityOf(t *testing.T, s *Server, n *core.Node) (*x509.Certificate, string) {
	t.Helper()
	s.mu.Lock()
	snap, err := s.snapshotLocked(s.gen, keyOf(n))
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	sec := snap.GetResources(resource.SecretType)[IdentitySecretName("default")]
	if sec == nil {
		t.Fatalf("node %s got no %s secret", n.GetId(), IdentitySecretName("default"))
	}
	b, _ := pem.Decode(sec.(*tlsv3.Secret).GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.URIs) != 1 {
		t.Fatalf("identity has URIs %v", c.URIs)
	}
	return c, snap.GetVersion(resource.SecretType)
}

// The mesh CA is made once and kept in the state directory; each proxy gets
// its identity (the egress its own) and a new one before the last expires.
func TestMeshIdentities(t *testing.T) {
	res := t.TempDir()
	b, err := os.ReadFile(filepath.Join("testdata", "egress-tls", "egress.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(res, "egress.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	s, err := New(Options{ResourcesDir: res, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(state, "mesh-ca", "default.ca-1.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("CA key not kept private in the state directory: %v %v", st, err)
	}
	sidecar := &core.Node{Id: "default.web-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"kuma.io/service": structpb.NewStringValue("web")}}}
	egress := &core.Node{Id: "zoneegress-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{NodeMetadataProxyType: structpb.NewStringValue(ProxyTypeEgress)}}}
	c, v1 := identityOf(t, s, sidecar)
	if got := c.URIs[0].String(); got != "spiffe://default/web" {
		t.Errorf("sidecar identity %s, want spiffe://default/web", got)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d < 24*time.Hour || d > 25*time.Hour {
		t.Errorf("identity valid for %v, want the mesh's 1d", d)
	}
	e, _ := identityOf(t, s, egress)
	if got := e.URIs[0].String(); got != "spiffe://default/zone-egress" {
		t.Errorf("egress identity %s, want Kuma's spiffe://default/zone-egress", got)
	}
	// The same CA signs both, and a restarted control plane keeps it.
	s2, err := New(Options{ResourcesDir: res, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := identityOf(t, s2, sidecar)
	for _, cert := range []*x509.Certificate{c, e, c2} {
		if err := cert.CheckSignatureFrom(caCert(t, s)); err != nil {
			t.Errorf("%s not signed by the kept mesh CA: %v", cert.URIs[0], err)
		}
	}
	// Four fifths into its life, the identity is replaced.
	s.now = func() time.Time { return time.Now().Add(20 * time.Hour) }
	s.rotateDue()
	c3, v3 := identityOf(t, s, sidecar)
	if c3.SerialNumber.Cmp(c.SerialNumber) == 0 || v3 == v1 {
		t.Errorf("identity not rotated (serial %v, version %s -> %s)", c3.SerialNumber, v1, v3)
	}
}

func caCert(t *testing.T, s *Server) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(s.gen.cas["default"].CertPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Identities of services no node has any more are forgotten.
func TestIdentitiesPruned(t *testing.T) {
	res := t.TempDir()
	b, err := os.ReadFile(filepath.Join("testdata", "egress-tls", "egress.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(res, "egress.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{ResourcesDir: res})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		identityOf(t, s, &core.Node{Id: fmt.Sprintf("default.pod-%d", i)})
	}
	s.rotateDue()
	s.mu.Lock()
	n := len(s.ids)
	s.mu.Unlock()
	if n != 0 {
		t.Errorf("%d identities kept for 40 services no connected node has", n)
	}
}

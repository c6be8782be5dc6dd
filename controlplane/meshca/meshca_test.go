package meshca

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAuthorityKeptAndIssues(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	a, err := LoadOrCreate(dir, "default", "ca-1", 2048, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "mesh-ca"))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("CA directory %v %v, want 0700", st, err)
	}
	again, err := LoadOrCreate(dir, "default", "ca-1", 2048, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.CertPEM, again.CertPEM) {
		t.Fatal("a second load made a new CA")
	}
	id, err := again.Issue("web", 72*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(id.CertPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://default/web" || id.URI != "spiffe://default/web" {
		t.Errorf("identity URIs %v", c.URIs)
	}
	if err := c.CheckSignatureFrom(a.cert); err != nil {
		t.Errorf("not signed by the CA: %v", err)
	}
	// Never valid past the CA.
	if !id.NotAfter.Equal(a.cert.NotAfter) {
		t.Errorf("identity valid until %v, CA until %v", id.NotAfter, a.cert.NotAfter)
	}
	if r := id.RenewAt(); !r.After(now) || !r.Before(id.NotAfter) {
		t.Errorf("renewal at %v, outside its life %v..%v", r, id.NotBefore, id.NotAfter)
	}
	// An expired CA is refused with the files to remove.
	_, err = LoadOrCreate(dir, "default", "ca-1", 2048, 48*time.Hour, now.Add(72*time.Hour))
	if err == nil || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), "default.ca-1.crt") {
		t.Errorf("expired CA: %v", err)
	}
}

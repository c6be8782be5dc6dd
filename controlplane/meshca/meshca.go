// Package meshca is the builtin certificate authority of a mesh with mTLS,
// as Kuma's builtin backend: one CA per mesh and backend, created on first
// use and kept in the control plane's state directory, which signs the
// identity certificate of every proxy (a SPIFFE URI SAN,
// spiffe://<mesh>/<service>).
package meshca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// SPIFFEID is the identity of a service of a mesh, Kuma's form.
func SPIFFEID(meshName, service string) string {
	return (&url.URL{Scheme: "spiffe", Host: meshName, Path: "/" + service}).String()
}

// Authority is a mesh's CA: its certificate and the key that signs.
type Authority struct {
	Mesh, Backend string
	// CertPEM is what proxies trust: the validation context of every mesh
	// connection.
	CertPEM []byte
	cert    *x509.Certificate
	key     crypto.Signer
}

// Identity is a proxy's certificate and key, PEM.
type Identity struct {
	URI       string
	CertPEM   []byte
	KeyPEM    []byte
	NotBefore time.Time
	NotAfter  time.Time
	// Serial names this issue, so that a rotation is a new version.
	Serial string
}

// RenewAt is when an identity is replaced: once four fifths of its life have
// passed, leaving the proxy the last fifth to pick up the new one (Envoy
// takes a new SDS secret without dropping connections).
func (id Identity) RenewAt() time.Time {
	return id.NotBefore.Add(id.NotAfter.Sub(id.NotBefore) * 4 / 5)
}

// LoadOrCreate returns the mesh's CA kept in dir, creating it (RSA keyBits,
// valid for lifetime) when there is none. dir "" keeps a new CA in memory
// only: every restart then changes the mesh's trust root.
func LoadOrCreate(dir, meshName, backend string, keyBits int, lifetime time.Duration, now time.Time) (*Authority, error) {
	base := ""
	if dir != "" {
		base = filepath.Join(dir, "mesh-ca", meshName+"."+backend)
		a, err := load(base, meshName, backend)
		if err == nil {
			if now.After(a.cert.NotAfter) {
				return nil, fmt.Errorf("CA of mesh %s (%s.crt) expired on %s: remove %[2]s.crt and %[2]s.key to create a new one", meshName, base, a.cert.NotAfter.Format(time.RFC3339))
			}
			return a, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	a, keyPEM, err := create(meshName, backend, keyBits, lifetime, now)
	if err != nil {
		return nil, fmt.Errorf("create CA of mesh %s: %w", meshName, err)
	}
	if base != "" {
		if err := os.MkdirAll(filepath.Dir(base), 0o700); err != nil {
			return nil, fmt.Errorf("create CA directory: %w", err)
		}
		// The key first: a certificate without its key is not a CA.
		if err := writeFile(base+".key", keyPEM, 0o600); err != nil {
			return nil, err
		}
		if err := writeFile(base+".crt", a.CertPEM, 0o644); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func load(base, meshName, backend string) (*Authority, error) {
	certPEM, err := os.ReadFile(base + ".crt")
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(base + ".key")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("CA of mesh %s: %s.crt has no %s.key", meshName, base, base)
		}
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("CA of mesh %s: %s.crt or .key is not PEM", meshName, base)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %s.crt: %w", base, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CA key %s.key: %w", base, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key %s.key cannot sign", base)
	}
	return &Authority{Mesh: meshName, Backend: backend, CertPEM: certPEM, cert: cert, key: signer}, nil
}

func create(meshName, backend string, keyBits int, lifetime time.Duration, now time.Time) (*Authority, []byte, error) {
	k, err := rsa.GenerateKey(rand.Reader, keyBits)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	id, _ := url.Parse(SPIFFEID(meshName, ""))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"shunt"}, OrganizationalUnit: []string{"Mesh"}, CommonName: meshName},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(lifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{id},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return &Authority{Mesh: meshName, Backend: backend, CertPEM: pemOf("CERTIFICATE", der), cert: cert, key: k}, pemOf("PRIVATE KEY", kd), nil
}

// Issue signs an identity certificate for service, valid from now for
// lifetime (never past the CA's own expiry). The URI SAN is the identity;
// the certificate serves both ends of a mesh connection.
func (a *Authority) Issue(service string, lifetime time.Duration, now time.Time) (Identity, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Identity{}, fmt.Errorf("identity key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return Identity{}, err
	}
	uri := SPIFFEID(a.Mesh, service)
	u, _ := url.Parse(uri)
	notAfter := now.Add(lifetime)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"shunt"}, CommonName: service},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &k.PublicKey, a.key)
	if err != nil {
		return Identity{}, fmt.Errorf("sign identity %s: %w", uri, err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return Identity{}, err
	}
	sum := sha256.Sum256(der)
	return Identity{
		URI: uri, CertPEM: pemOf("CERTIFICATE", der), KeyPEM: pemOf("PRIVATE KEY", kd),
		NotBefore: tmpl.NotBefore, NotAfter: notAfter, Serial: hex.EncodeToString(sum[:8]),
	}, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s, nil
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeFile replaces path atomically with mode perm.
func writeFile(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

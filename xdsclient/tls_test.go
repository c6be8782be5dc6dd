package xdsclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/shunt-dev/shunt/mesh"
)

type certPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func issue(t *testing.T, tmpl *x509.Certificate, parent *certPair) *certPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.NotBefore = time.Now().Add(-time.Minute)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	signer, parentCert := key, tmpl
	if parent != nil {
		signer, parentCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &certPair{cert: cert, key: key, der: der}
}

func (p *certPair) write(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.der}), 0o600); err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(p.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestMTLSAndBearerToken(t *testing.T) {
	dir := t.TempDir()
	ca := issue(t, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil)
	server := issue(t, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "xds"}, DNSNames: []string{"xds.test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca)
	client := issue(t, &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "node-1"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca)
	caFile, _ := ca.write(t, dir, "ca")
	clientCert, clientKey := client.write(t, dir, "client")

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	serverTLS := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{server.der}, PrivateKey: server.key}},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
	var mu sync.Mutex
	var peers []string
	auth := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer s3cret" {
			return status.Errorf(codes.Unauthenticated, "bad token %q", got)
		}
		if p, ok := peer.FromContext(ss.Context()); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				mu.Lock()
				peers = append(peers, ti.State.PeerCertificates[0].Subject.CommonName)
				mu.Unlock()
			}
		}
		return handler(srv, ss)
	}
	srv := startGCPServer(t, grpc.Creds(credentials.NewTLS(serverTLS)), grpc.StreamInterceptor(auth))
	srv.set(t, "node-1", "1", []types.Resource{dnsListener(t, "dns", domain{"httpbin.mesh", []string{"240.0.0.1"}})}, nil, nil)

	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := TLSConfig(caFile, clientCert, clientKey, "xds.test")
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Server: srv.addr, NodeID: "node-1", TLS: tlsCfg, TokenFile: tokenFile, Logger: quietLogger(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	eventually(t, 5*time.Second, "the wrong token is refused", func() bool {
		return strings.Contains(c.Status().LastError, "Unauthenticated")
	})
	if c.Current() != nil || c.Status().Connected {
		t.Fatalf("with a wrong token: current %+v, status %+v", c.Current(), c.Status())
	}

	// The token is read again on each connect: fixing the file is enough.
	writeFile(t, tokenFile, "s3cret\n")
	got := nextUpdate(t, c, 5*time.Second, func(*mesh.AgentSnapshot) bool { return true })
	if len(got.Names["httpbin.mesh"]) != 1 {
		t.Errorf("snapshot over mTLS = %+v", got)
	}
	mu.Lock()
	if len(peers) == 0 || peers[0] != "node-1" {
		t.Errorf("server saw client certificates %v, want node-1", peers)
	}
	mu.Unlock()

	// Without a client certificate the server refuses the handshake.
	noCert, err := TLSConfig(caFile, "", "", "xds.test")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := New(Config{Server: srv.addr, NodeID: "node-2", TLS: noCert, TokenFile: tokenFile, Logger: quietLogger(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c2.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil after the context ends", err)
	}
	if st := c2.Status(); st.LastError == "" || st.Reconnects == 0 || c2.Current() != nil {
		t.Errorf("without a client certificate: status %+v", st)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                 string
		ca, cert, key, wantE string
	}{
		{"missing CA", filepath.Join(dir, "none"), "", "", "read CA file"},
		{"CA without PEM", notPEM, "", "", "no PEM certificate"},
		{"cert without key", "", notPEM, "", "together"},
		{"bad pair", "", notPEM, notPEM, "load client certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := TLSConfig(tc.ca, tc.cert, tc.key, "")
			if err == nil || !strings.Contains(err.Error(), tc.wantE) {
				t.Errorf("err = %v, want one containing %q", err, tc.wantE)
			}
		})
	}
}

func TestNewValidatesConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no server", Config{NodeID: "n"}, "Server"},
		{"server without port", Config{Server: "localhost", NodeID: "n"}, `Server "localhost"`},
		{"server with bad port", Config{Server: "localhost:http", NodeID: "n"}, `invalid port "http"`},
		{"no node id", Config{Server: "127.0.0.1:1"}, "NodeID"},
		{"backoff max below initial", Config{Server: "127.0.0.1:1", NodeID: "n", Backoff: BackoffConfig{Initial: time.Second, Max: time.Millisecond}}, "Backoff.Max 1ms"},
		{"backoff multiplier", Config{Server: "127.0.0.1:1", NodeID: "n", Backoff: BackoffConfig{Multiplier: 0.5}}, "Backoff.Multiplier 0.5"},
		{"corrupt persisted snapshot", Config{Server: "127.0.0.1:1", NodeID: "n", StateDir: corruptState(t)}, "decode persisted snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func corruptState(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, SnapshotFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBackoffJitterAndCap(t *testing.T) {
	b, err := BackoffConfig{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	for attempt, want := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second} {
		if got := b.ceiling(attempt); got != want {
			t.Errorf("ceiling(%d) = %v, want %v", attempt, got, want)
		}
	}
	if got := b.ceiling(100); got != 2*time.Second {
		t.Errorf("ceiling(100) = %v, want the 2s cap", got)
	}
	// Jittered, never above the cap, never below half of it: a returning
	// server is used within 2 s, a dead one tried at most once a second.
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := b.delay(100)
		if d < time.Second || d >= 2*time.Second {
			t.Fatalf("delay(100) = %v, outside [1s, 2s)", d)
		}
		seen[d.Round(100*time.Millisecond)] = true
	}
	if len(seen) < 5 {
		t.Errorf("delay(100) is not jittered: %v", seen)
	}
}

package controlplane

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	tls  tls.Certificate
}

func newTestCert(t *testing.T, tmpl *x509.Certificate, parent *testCert) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	signer, pc := key, tmpl
	if parent != nil {
		signer, pc = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, pc, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCert{cert: cert, key: key, tls: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// fixtureKey is the ExternalService client private key of the httpbin
// fixture, as it appears in a cluster's configuration.
func fixtureKey(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`name: clientKey\ndata: (\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no clientKey secret in the fixture")
	}
	key, err := base64.StdEncoding.DecodeString(string(m[1]))
	if err != nil || !bytes.Contains(key, []byte("PRIVATE KEY")) {
		t.Fatalf("fixture key: %v", err)
	}
	return key
}

// fetchAll opens an ADS stream as node and returns the bytes of the first
// response to each requested type, or the stream's error.
func fetchAll(addr string, creds credentials.TransportCredentials, node string) ([]byte, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// Generous: under the race detector on a loaded 2-core machine the first
	// response (TLS handshake, CA, identity issuance) can take seconds. The
	// loop ends as soon as every requested type has answered once.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	n := &core.Node{Id: node}
	pending := map[string]bool{}
	for _, typ := range []string{resource.ClusterType, resource.ListenerType, resource.SecretType} {
		if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: typ, Node: n}); err != nil {
			break
		}
		pending[typ] = true
		n = nil
	}
	var all []byte
	for len(pending) > 0 {
		resp, err := stream.Recv()
		if err != nil {
			return all, err
		}
		delete(pending, resp.GetTypeUrl())
		for _, r := range resp.GetResources() {
			all = append(all, r.GetValue()...)
		}
	}
	return all, nil
}

// `shunt controlplane` over mutual TLS: a node gets its configuration only
// with a client certificate that names it; no certificate, another node's
// id, or plaintext get nothing, and the private keys never cross in clear.
func TestMTLSNodeIdentity(t *testing.T) {
	dir := t.TempDir()
	b, _ := os.ReadFile("../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml")
	if err := os.WriteFile(filepath.Join(dir, "httpbin.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	key := fixtureKey(t)

	ca := newTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil)
	other := newTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "other CA"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil)
	srvCert := newTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "cp"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca)
	client := func(cn string, parent *testCert) *testCert {
		return newTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, parent)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	srv, err := New(Options{ResourcesDir: dir, Logger: quietLog(),
		Credentials: credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{srvCert.tls}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
		}),
		RequireNodeIdentity: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done })

	tlsAs := func(c *testCert) credentials.TransportCredentials {
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if c != nil {
			cfg.Certificates = []tls.Certificate{c.tls}
		}
		return credentials.NewTLS(cfg)
	}
	for _, tc := range []struct {
		name    string
		creds   credentials.TransportCredentials
		node    string
		wantKey bool
		wantErr string
	}{
		{"its own node", tlsAs(client("node-a", ca)), "node-a", true, ""},
		{"another node's id", tlsAs(client("node-a", ca)), "node-b", false, "PermissionDenied"},
		{"no client certificate", tlsAs(nil), "node-a", false, "Unavailable"},
		{"a certificate of another CA", tlsAs(client("node-a", other)), "node-a", false, "Unavailable"},
		{"plaintext", insecure.NewCredentials(), "node-a", false, "Unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fetchAll(lis.Addr().String(), tc.creds, tc.node)
			if hasKey := bytes.Contains(got, key); hasKey != tc.wantKey {
				t.Errorf("private key served = %v, want %v (err %v)", hasKey, tc.wantKey, err)
			}
			if tc.wantErr == "" && err != nil {
				t.Errorf("stream error %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("stream error %v, want %s", err, tc.wantErr)
			}
		})
	}
}

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr string
		p    ListenPolicy
		ok   bool
	}{
		{"127.0.0.1:15680", ListenPolicy{}, true},
		{"[::1]:15680", ListenPolicy{}, true},
		{"localhost:15680", ListenPolicy{}, true},
		{"0.0.0.0:15680", ListenPolicy{}, false},
		{":15680", ListenPolicy{}, false},
		{"10.0.0.1:15680", ListenPolicy{TLS: true}, false},
		{"10.0.0.1:15680", ListenPolicy{TLS: true, ClientCerts: true}, true},
		{"0.0.0.0:15680", ListenPolicy{AllowUnauthenticated: true}, true},
	} {
		err := CheckListen(tc.addr, tc.p)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, %+v) = %v, want ok=%v", tc.addr, tc.p, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), tc.addr) {
			t.Errorf("error %q does not name the address", err)
		}
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Package istio_test reads Istio's NDS NameTables from the real istiod
// (pilot-discovery from ../shared/tools, or $ISTIOD), run without
// Kubernetes on ServiceEntry files, in a network namespace of the test's
// own that has nothing but lo.
package istio_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/nodemeta"
	"github.com/shunt-dev/shunt/tests/testenv"
	"github.com/shunt-dev/shunt/xdsclient"
)

const istiodXZ = "istiod-pilot-discovery-eed52ebb66ad.xz"

func tools() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "tools")
}

// istiodBinary is $ISTIOD or the shared build, decompressed.
func istiodBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("ISTIOD"); p != "" {
		return p
	}
	xz := filepath.Join(tools(), istiodXZ)
	if _, err := os.Stat(xz); err != nil {
		t.Skipf("istiod not available: %s is absent and ISTIOD is not set", xz)
	}
	testenv.RequireBinary(t, "xz")
	out := filepath.Join(t.TempDir(), "pilot-discovery")
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("xz", "-dc", xz)
	cmd.Stdout = f
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("decompress %s: %v: %s", xz, err, stderr.String())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

func serviceEntry(name, host string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: %s
  namespace: default
spec:
  hosts: [%s]
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
  location: MESH_EXTERNAL
`, name, host)
}

// startIstiod runs istiod on the ServiceEntry files of the returned
// config directory, in a namespace of its own with nothing but lo.
func startIstiod(t *testing.T) (*testenv.Netns, string) {
	t.Helper()
	testenv.RequireRoot(t)
	bin := istiodBinary(t)
	tmpl, err := os.ReadFile(filepath.Join(tools(), "istiod-mesh.yaml.in"))
	if err != nil {
		t.Skipf("istiod mesh config template: %v", err)
	}
	w := t.TempDir()
	config := filepath.Join(w, "config")
	run := filepath.Join(w, "run")
	for _, d := range []string{config, run} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(w, "mesh.yaml"), bytes.ReplaceAll(tmpl, []byte("@CONFIG_DIR@"), []byte(config)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(config, "httpbin.yaml"), []byte(serviceEntry("httpbin", "httpbin.org")), 0o644); err != nil {
		t.Fatal(err)
	}

	ns := testenv.NewNetns(t, "istiod")
	cmd := ns.Command(context.Background(), bin, "discovery", "--meshConfig", filepath.Join(w, "mesh.yaml"), "--registries=",
		"--domain", "cluster.local", "--grpcAddr", "127.0.0.1:15010", "--httpAddr", "127.0.0.1:8080",
		"--monitoringAddr", "127.0.0.1:15014", "--secureGRPCAddr", "127.0.0.1:15012",
		"--httpsAddr", "127.0.0.1:15017", "--ctrlz_address", "127.0.0.1", "--shutdownDuration", "1s")
	cmd.Dir = run // istiod looks for ./etc/cacerts and ./var/run/secrets here
	cmd.Env = append(os.Environ(), "POD_NAMESPACE=istio-system", "POD_NAME=istiod-local", "REVISION=default",
		"PILOT_ENABLE_IP_AUTOALLOCATE=false")
	p := ns.Start(cmd)
	t.Cleanup(func() {
		if t.Failed() {
			out := p.Output()
			t.Logf("istiod output (tail):\n%s", out[max(0, len(out)-6000):])
		}
	})
	return ns, config
}

func TestIstiodNameTable(t *testing.T) {
	ns, config := startIstiod(t)
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	const node = "sidecar~10.0.0.1~app.default~default.svc.cluster.local"
	if f := nodemeta.Detect(node, "default", false); f != nodemeta.Istio {
		t.Fatalf("flavor of %s = %s", node, f)
	}
	md, err := nodemeta.Build(nodemeta.Options{Flavor: nodemeta.Istio, Istio: nodemeta.IstioOptions{DNSCapture: true, AutoAllocate: true}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := xdsclient.New(xdsclient.Config{Server: "127.0.0.1:15010", NodeID: node, Metadata: md, NameTable: true, Dialer: dial,
		Backoff: xdsclient.BackoffConfig{Initial: 100 * time.Millisecond, Max: 500 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	vips := netip.MustParsePrefix("240.240.0.0/16")
	wait := func(d time.Duration, what string, ok func(*mesh.AgentSnapshot) bool) *mesh.AgentSnapshot {
		t.Helper()
		deadline := time.After(d)
		for {
			if s := c.Current(); s != nil && ok(s) {
				return s
			}
			select {
			case <-c.Updates():
			case <-time.After(100 * time.Millisecond):
			case <-deadline:
				t.Fatalf("timed out after %v waiting for %s; status %+v, snapshot %+v", d, what, c.Status(), c.Current())
			}
		}
	}
	hasVIP := func(s *mesh.AgentSnapshot, name string) bool {
		for _, a := range s.Names[name] {
			if vips.Contains(a) {
				return true
			}
		}
		return false
	}
	s := wait(60*time.Second, "httpbin.org with an auto-allocated VIP", func(s *mesh.AgentSnapshot) bool { return hasVIP(s, "httpbin.org") })
	t.Logf("httpbin.org = %v (istiod's auto-allocated VIP)", s.Names["httpbin.org"])

	start := time.Now()
	if err := os.WriteFile(filepath.Join(config, "example.yaml"), []byte(serviceEntry("example", "example.com")), 0o644); err != nil {
		t.Fatal(err)
	}
	s = wait(10*time.Second, "a new ServiceEntry's host", func(s *mesh.AgentSnapshot) bool { return hasVIP(s, "example.com") })
	t.Logf("example.com = %v, %v after its file was written", s.Names["example.com"], time.Since(start).Round(time.Millisecond))
	if c.Status().LastNACK != "" {
		t.Errorf("NACKed istiod's configuration: %s", c.Status().LastNACK)
	}
}

package istio_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/nodemeta"
	"github.com/shunt-dev/shunt/tests/istiod"
	"github.com/shunt-dev/shunt/xdsclient"
)

// xdsclient alone against istiod: the node flavour detected from the id,
// its metadata built by nodemeta, the names from the NameTable.
func TestIstiodNameTable(t *testing.T) {
	cp := istiod.Start(t)
	cp.ServiceEntry("httpbin", "httpbin.org")
	dial := cp.Dial
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
	cp.ServiceEntry("example", "example.com")
	s = wait(10*time.Second, "a new ServiceEntry's host", func(s *mesh.AgentSnapshot) bool { return hasVIP(s, "example.com") })
	t.Logf("example.com = %v, %v after its file was written", s.Names["example.com"], time.Since(start).Round(time.Millisecond))
	if c.Status().LastNACK != "" {
		t.Errorf("NACKed istiod's configuration: %s", c.Status().LastNACK)
	}
}

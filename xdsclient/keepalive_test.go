package xdsclient

import (
	"context"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/controlplane"
)

// TestEmbeddedControlPlaneKeepsTheStream subscribes to the control plane
// served in-process as `shunt run` embeds it, with the client pinging every
// 10 s (gRPC's shortest client interval; shunt's default is 30 s) and the
// server's tolerance scaled down in proportion: a server without the
// keepalive policy sends GOAWAY too_many_pings after the third ping, so the
// stream must survive more than three intervals.
func TestEmbeddedControlPlaneKeepsTheStream(t *testing.T) {
	if testing.Short() {
		t.Skip("waits through several keepalive intervals")
	}
	resources := t.TempDir()
	copyFile(t, "../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml", resources+"/httpbin.yaml")
	cp, err := controlplane.New(controlplane.Options{ResourcesDir: resources, KeepaliveMinTime: 5 * time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	dial, done := cp.ServeInProcess(ctx)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	c, err := New(Config{Server: "embedded", Dialer: dial, NodeID: "node-1", KeepaliveTime: 10 * time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	eventually(t, 10*time.Second, "the client to connect", func() bool { return c.Status().Connected })
	time.Sleep(45 * time.Second)
	if s := c.Status(); !s.Connected || s.Reconnects != 0 {
		t.Fatalf("after 4 keepalive intervals: connected=%v reconnects=%d last error %q", s.Connected, s.Reconnects, s.LastError)
	}
}

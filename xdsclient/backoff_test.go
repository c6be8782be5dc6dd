package xdsclient

import (
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestReturningControlPlaneUsedWithin2s runs the client with its default
// backoff against a server that is down for a while (its port accepts and
// drops every connection, counting them), then back: the client must not
// hammer the dead server, and must use the returning one within the 2 s
// cap.
func TestReturningControlPlaneUsedWithin2s(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out an outage")
	}
	resources := t.TempDir()
	copyFile(t, "../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml", filepath.Join(resources, "httpbin.yaml"))

	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	var attempts atomic.Int32
	go func() {
		for {
			c, err := dead.Accept()
			if err != nil {
				return
			}
			attempts.Add(1)
			c.Close()
		}
	}()

	c, err := New(Config{Server: addr, NodeID: "node-1", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	const outage = 6 * time.Second
	time.Sleep(outage)
	dead.Close()
	n := attempts.Load()
	// 250 ms, 500 ms, 1 s, then at most one a second: about 8 in 6 s.
	if n < 3 || n > 12 {
		t.Errorf("%d connection attempts in %v of outage, want between 3 and 12", n, outage)
	}

	back := time.Now()
	startControlPlane(t, resources, t.TempDir(), addr)
	eventually(t, 10*time.Second, "the client to connect", func() bool { return c.Status().Connected })
	// 2 s of backoff at most, plus the connection itself; generous for a
	// loaded machine, still far below the old 30 s ceiling.
	if took := time.Since(back); took > 4*time.Second {
		t.Errorf("the returning control plane was used after %v, want within about 2s", took)
	}
}

package xdsclient

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/controlplane"
	"github.com/shunt-dev/shunt/mesh"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, string(b))
}

// writeFile replaces a file by rename, so a watcher never reads half of it.
func writeFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startControlPlane runs shunt's control plane on addr (":0" for any
// loopback port) and returns its address and a stop function that waits for
// it to end.
func startControlPlane(t *testing.T, resources, state, addr string) (*controlplane.Server, string, func()) {
	t.Helper()
	srv, err := controlplane.New(controlplane.Options{ResourcesDir: resources, StateDir: state, PollInterval: 50 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var lis net.Listener
	// The port of a stopped server can linger briefly; retry the bind.
	for deadline := time.Now().Add(5 * time.Second); ; {
		lis, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return srv, lis.Addr().String(), stop
}

// runClient runs c until the test ends and checks Run returns nil.
func runClient(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// nextUpdate waits for an update satisfying ok, skipping others.
func nextUpdate(t *testing.T, c *Client, within time.Duration, ok func(*mesh.AgentSnapshot) bool) *mesh.AgentSnapshot {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case s := <-c.Updates():
			if ok(s) {
				return s
			}
		case <-timer.C:
			t.Fatalf("no matching snapshot within %v; current %+v, status %+v", within, c.Current(), c.Status())
			return nil
		}
	}
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fastBackoff() BackoffConfig {
	return BackoffConfig{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}
}

func TestAgainstShuntControlPlane(t *testing.T) {
	resources, cpState, agentState := t.TempDir(), t.TempDir(), t.TempDir()
	copyFile(t, "../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml", filepath.Join(resources, "httpbin.yaml"))
	cp, addr, stop := startControlPlane(t, resources, cpState, "127.0.0.1:0")

	c, err := New(Config{Server: addr, NodeID: "node-1", Cluster: "workloads", Zone: "zone-1", StateDir: agentState, Logger: quietLogger(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	if c.Current() != nil {
		t.Fatalf("Current before any update = %+v, want nil", c.Current())
	}
	runClient(t, c)

	vips := cp.VIPs()
	first := nextUpdate(t, c, 5*time.Second, func(*mesh.AgentSnapshot) bool { return true })
	wantVIPs := []netip.Addr{vips.V4["httpbin.mesh"]}
	if v6, ok := vips.V6["httpbin.mesh"]; ok {
		wantVIPs = append(wantVIPs, v6)
	}
	if got := first.Names["httpbin.mesh"]; !reflect.DeepEqual(got, wantVIPs) {
		t.Errorf("httpbin.mesh → %v, want %v (the control plane's VIPs)", got, wantVIPs)
	}
	if _, ok := first.Names["httpbin.org"]; !ok {
		t.Errorf("the real name httpbin.org has no VIP: %v", first.Names)
	}
	if !first.Passthrough {
		t.Error("Passthrough = false, want true: a mesh without a Mesh resource allows passthrough")
	}
	if !slices.Contains(first.DNSHosts, mesh.DNSHost{Host: "httpbin.org", Port: 443}) {
		t.Errorf("DNSHosts = %v, want httpbin.org:443 (its LOGICAL_DNS cluster)", first.DNSHosts)
	}
	if first.Version == "" || first.ReceivedAt.IsZero() {
		t.Errorf("version %q received at %v: both must be set", first.Version, first.ReceivedAt)
	}
	st := c.Status()
	if !st.Connected || st.Acked[ListenerType] == "" || st.Acked[ClusterType] == "" || st.LastNACK != "" {
		t.Errorf("status after the first snapshot = %+v", st)
	}

	// Passthrough off in the Mesh resource: the client must see it
	// within a second of the file changing.
	copyFile(t, "../tests/fixtures/externalservices/no-passthrough/mesh.yaml", filepath.Join(resources, "mesh.yaml"))
	changed := time.Now()
	second := nextUpdate(t, c, time.Second, func(s *mesh.AgentSnapshot) bool { return s.Version != first.Version })
	t.Logf("change reached the client in %v", time.Since(changed).Round(time.Millisecond))
	// One update for the whole change: clusters (passthrough) and
	// listeners (the new name) together, never one without the other.
	if second.Passthrough {
		t.Error("Passthrough still true after the Mesh resource disabled it")
	}
	if _, ok := second.Names["httpbin.mesh"]; !ok {
		t.Errorf("httpbin.mesh lost after the change: %v", second.Names)
	}
	if _, ok := second.Names["httpbin-tls.mesh"]; !ok {
		t.Errorf("httpbin-tls.mesh from the new file missing: %v", second.Names)
	}

	// Control plane restart on the same port, with the same inputs: the
	// snapshot stays in force throughout and nothing new is published.
	stop()
	eventually(t, 5*time.Second, "client notices the server is gone", func() bool { return !c.Status().Connected })
	if c.Current() != second {
		t.Fatalf("Current changed while the server was down: %+v", c.Current())
	}
	before := c.Status().Reconnects
	time.Sleep(300 * time.Millisecond) // a few failed attempts against a closed port
	startControlPlane(t, resources, cpState, addr)
	eventually(t, 5*time.Second, "client reconnects", func() bool {
		s := c.Status()
		return s.Connected && s.Reconnects > before
	})
	// Reconnected means answered on the new stream; give the whole
	// configuration a moment to arrive before checking nothing changed.
	time.Sleep(200 * time.Millisecond)
	if c.Current() != second {
		t.Errorf("the same configuration after a restart replaced the snapshot: %+v", c.Current())
	}
	select {
	case s := <-c.Updates():
		if s != second {
			t.Errorf("an update was published after a restart with the same inputs: %+v", s)
		}
	default:
	}

	// A restarted agent with no server to reach starts from what was
	// persisted.
	c2, err := New(Config{Server: "127.0.0.1:1", NodeID: "node-1", StateDir: agentState, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	got := c2.Current()
	if got == nil {
		t.Fatal("no persisted snapshot")
	}
	if got.Version != second.Version || !sameContent(got, second) || !got.ReceivedAt.Equal(second.ReceivedAt) {
		t.Errorf("persisted snapshot = %+v\nwant %+v", got, second)
	}
	runClient(t, c2)
	time.Sleep(100 * time.Millisecond)
	if c2.Current() != got || c2.Status().Connected {
		t.Errorf("with no server, Current = %+v and status %+v", c2.Current(), c2.Status())
	}
}

package xdsproxy

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/controlplane"
	"github.com/shunt-dev/shunt/xdsclient"
)

// listeningTCPInodes returns the inodes of this process's listening TCP
// sockets, from /proc (what any process in the namespace can read).
func listeningTCPInodes(t *testing.T) map[string]bool {
	t.Helper()
	listening := map[string]bool{}
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) > 9 && fields[3] == "0A" {
				listening[fields[9]] = true
			}
		}
	}
	mine := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil || !strings.HasPrefix(l, "socket:[") {
			continue
		}
		if ino := strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"); listening[ino] {
			mine[ino] = true
		}
	}
	return mine
}

// The layout of `shunt run --resources`: the control plane in-process, the
// proxy before it, Envoy on the socket. Nothing of it listens on TCP, so
// no other process can subscribe with a node id of its choosing.
func TestEmbeddedLayoutOpensNoTCPPort(t *testing.T) {
	before := listeningTCPInodes(t)
	res := t.TempDir()
	b, err := os.ReadFile("../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(res, "httpbin.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.New(controlplane.Options{ResourcesDir: res, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dial, _ := cp.ServeInProcess(ctx)
	upCfg := xdsclient.Config{Server: "embedded", Dialer: dial, NodeID: nodeID}
	p, err := New(Config{Upstream: func(ctx context.Context) (xdsclient.ADSStream, error) { return xdsclient.OpenStream(ctx, upCfg) }, NodeID: nodeID, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	sock := SocketPath(shortTempDir(t))
	ln, err := Listen(sock, uint32(os.Getuid()), uint32(os.Getgid()), quiet())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.Run(ctx) }()
	go func() { _ = p.Serve(ctx, ln) }()
	c, err := xdsclient.New(xdsclient.Config{Server: "xds-proxy", NodeID: nodeID, Stream: p.LocalStream, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.Run(ctx) }()
	e := startEnvoy(t, sock, envoyNode(), nil)
	eventually(t, 5*time.Second, "Envoy and shunt configured", func() bool {
		s := c.Current()
		return e.version("type.googleapis.com/envoy.config.listener.v3.Listener") != "" && s != nil && len(s.Names["httpbin.mesh"]) > 0
	})
	for ino := range listeningTCPInodes(t) {
		if !before[ino] {
			t.Errorf("a TCP listener (socket inode %s) was opened", ino)
		}
	}
	// The probe sees a listener when there is one.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if len(listeningTCPInodes(t)) != len(before)+1 {
		t.Error("the probe does not see a TCP listener")
	}
}

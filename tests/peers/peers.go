// Package peers holds what the tests of the real control planes (kuma-cp,
// istiod) share: the peer's binary, decompressed from ../shared/tools; the
// network namespace of the test's own, with nothing but lo, it runs in;
// the loopback relay that lets a pod reach it; and the ADS recorder that
// writes xdsclient's fixtures.
package peers

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// Binary returns a peer's executable: the file $env names, or
// ../shared/tools/xz decompressed into a temporary directory as out. It
// skips the test, naming the peer, when neither exists (a clone without
// ../shared).
func Binary(t testing.TB, name, env, xz, out string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", env, p, err)
		}
		return p
	}
	xz = filepath.Join(toolsDir(), xz)
	if _, err := os.Stat(xz); err != nil {
		t.Skipf("%s not available: %s is absent and %s is not set", name, xz, env)
	}
	testenv.RequireBinary(t, "xz")
	out = filepath.Join(t.TempDir(), out)
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

// toolsDir is ../shared/tools beside the repository.
func toolsDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "tools")
}

// Peer is a control plane's network namespace. It keeps nothing but lo,
// because the peers listen on every address.
type Peer struct {
	Ns *testenv.Netns
}

// Dial connects to addr inside the peer's namespace.
func (p *Peer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := p.Ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// LogOnFailure logs the tail of what the peer printed when the test fails.
func LogOnFailure(t testing.TB, name string, log func() string) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log (tail):\n%s", name, Tail(log(), 60))
		}
	})
}

// Tail is the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

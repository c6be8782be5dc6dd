// Package dns_test runs shunt's DNS interceptor against real peers: bind9 as
// the upstream, dig, kdig, Go's resolver and glibc as clients.
package dns_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var build struct {
	once sync.Once
	path string
	out  []byte
	err  error
}

// shuntBinary builds cmd/shunt once per test run, into a directory any user
// can read so that it can also run under the proxy's UID.
func shuntBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "shunt-dns-test-")
		if err != nil {
			build.err = err
			return
		}
		_ = os.Chmod(dir, 0o755)
		build.path = filepath.Join(dir, "shunt")
		build.out, build.err = exec.Command("go", "build", "-o", build.path, "github.com/shunt-dev/shunt/cmd/shunt").CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("build shunt: %v\n%s", build.err, build.out)
	}
	return build.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.path != "" {
		os.RemoveAll(filepath.Dir(build.path))
	}
	os.Exit(code)
}

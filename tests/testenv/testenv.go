// Package testenv builds the isolated worlds that shunt's privileged tests run
// in: network namespaces joined by veth pairs, cgroup-v2 subtrees, and
// processes started inside them. Everything it creates is removed by
// t.Cleanup, also when the test fails, so the machine's own network namespace
// and root cgroup are never touched.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI, where every prerequisite is
// installed by .ci/run and a missing one is a failure, not a reason to skip.
func InCI() bool { return os.Getenv("CI") != "" }

// RequireRoot skips the test when it cannot create namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if InCI() {
			t.Fatal("this test needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); CI runs as root")
		}
		t.Skip("needs root to create network namespaces; run it through .ci/run or sudo")
	}
}

// RequireBinary returns the path of a program the test drives. Locally a
// missing program skips the test with the package to install; in CI it fails,
// because `make deps` installs all of them.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if InCI() {
			t.Fatalf("%s not found on PATH; `make deps` should have installed it", name)
		}
		t.Skipf("%s not found on PATH; run `make deps`", name)
	}
	return p
}

// UniqueName returns prefix plus a short random suffix, short enough for an
// interface name (15 bytes) when prefix is at most 6 bytes.
func UniqueName(prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

// ReadableTempDir is a temporary directory that processes running under
// other users (a proxy under its own UID) can read. t.TempDir's parent is
// private to root.
func ReadableTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "shunt-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

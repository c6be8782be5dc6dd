// Package kuma_test runs shunt against the real kuma-cp 2.14.3: kuma-cp in
// a network namespace with nothing but lo, shunt in a pod namespace linked
// to an "internet", the two joined by a loopback relay the test holds.
package kuma_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

var shuntBin, fakeEnvoy string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // tests skip themselves with the reason
	}
	dir, err := os.MkdirTemp("", "shunt-kuma-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The Envoy double runs as the proxy's user and must be able to
	// execute.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	shuntBin, fakeEnvoy = filepath.Join(dir, "shunt"), filepath.Join(dir, "envoy")
	for out, pkg := range map[string]string{shuntBin: "github.com/shunt-dev/shunt/cmd/shunt", fakeEnvoy: "github.com/shunt-dev/shunt/tests/standin/fakeenvoy"} {
		if err := testenv.BuildPackage(out, pkg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

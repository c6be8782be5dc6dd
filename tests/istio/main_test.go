// Package istio_test runs shunt against the real istiod (pilot-discovery,
// without Kubernetes): istiod in a network namespace with nothing but lo,
// shunt in a pod namespace linked to an "internet", the two joined by a
// loopback relay the test holds.
package istio_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

var shuntBin string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // tests skip themselves with the reason
	}
	dir, err := os.MkdirTemp("", "shunt-istio-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shuntBin = filepath.Join(dir, "shunt")
	if err := testenv.BuildShunt(shuntBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// Package istio_test runs shunt against the real istiod (pilot-discovery,
// without Kubernetes): istiod in a network namespace with nothing but lo,
// shunt in a pod namespace linked to an "internet", the two joined by a
// loopback relay the test holds.
package istio_test

import (
	"os"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

var shuntBin string

func TestMain(m *testing.M) {
	os.Exit(testenv.BuildAndRun(m, "istio", testenv.Program{Path: &shuntBin, Name: "shunt", Pkg: testenv.ShuntPackage}))
}

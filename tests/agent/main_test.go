// Package agent_test runs `shunt run` in network namespaces against the
// behaviours of Kuma's ExternalService page: a pod whose traffic goes
// through an xDS-driven proxy stand-in, an "internet" with nginx posing as
// httpbin.org over TLS, and a ZoneEgress.
package agent_test

import (
	"os"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

type binaries struct{ shunt, meshproxy string }

var bins binaries

func TestMain(m *testing.M) {
	os.Exit(testenv.BuildAndRun(m, "agent",
		testenv.Program{Path: &bins.shunt, Name: "shunt", Pkg: testenv.ShuntPackage},
		testenv.Program{Path: &bins.meshproxy, Name: "meshproxy", Pkg: "github.com/shunt-dev/shunt/tests/standin/meshproxy"}))
}

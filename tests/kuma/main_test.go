// Package kuma_test runs shunt against the real kuma-cp 2.14.3: kuma-cp in
// a network namespace with nothing but lo, shunt in a pod namespace linked
// to an "internet", the two joined by a loopback relay the test holds.
package kuma_test

import (
	"os"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

var shuntBin, fakeEnvoy string

func TestMain(m *testing.M) {
	os.Exit(testenv.BuildAndRun(m, "kuma",
		testenv.Program{Path: &shuntBin, Name: "shunt", Pkg: testenv.ShuntPackage},
		testenv.Program{Path: &fakeEnvoy, Name: "envoy", Pkg: "github.com/shunt-dev/shunt/tests/standin/fakeenvoy"}))
}

// Package cni_test runs shunt's CNI plugin the way a container runtime does:
// cnitool executes a chain of the reference bridge and host-local plugins
// followed by shunt-cni, inside a "node" network namespace, for a "pod"
// namespace the test creates.
package cni_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// bins are built once for the package: shunt under its plugin name, and
// cnitool at the CNI library version shunt uses.
var bins struct {
	pluginDir string
	cnitool   string
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // the tests skip with the reason
	}
	dir, err := os.MkdirTemp("", "shunt-cni-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins.pluginDir = filepath.Join(dir, "plugins")
	bins.cnitool = filepath.Join(dir, "cnitool")
	if err := testenv.BuildShuntLean(filepath.Join(bins.pluginDir, "shunt-cni")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := testenv.BuildCNITool(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

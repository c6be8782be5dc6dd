// Package node_test runs the real `shunt node` agent the way a DaemonSet
// does, against a fake Kubernetes API server the test serves: the agent
// installs shunt-cni into a temporary CNI bin directory, chains it into a
// temporary conflist of the reference bridge and host-local plugins, and
// cnitool, in a "node" network namespace, builds "pod" namespaces with it.
package node_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// bins are built once for the package: the shunt binary the agent runs
// (and copies into the CNI bin dir), and cnitool at the CNI library
// version shunt uses.
var bins struct {
	shunt   string
	cnitool string
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // the tests skip with the reason
	}
	dir, err := os.MkdirTemp("", "shunt-node-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins.shunt = filepath.Join(dir, "shunt")
	bins.cnitool = filepath.Join(dir, "cnitool")
	if err := testenv.BuildShunt(bins.shunt); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// As the DaemonSet image holds them: the agent installs the lean build
	// beside it as the plugin.
	if err := testenv.BuildShuntLean(filepath.Join(dir, "shunt-cni")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := testenv.BuildCNITool(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// Package node_test runs the real `shunt node` agent the way a DaemonSet
// does, against a fake Kubernetes API server the test serves: the agent
// installs shunt-cni into a temporary CNI bin directory, chains it into a
// temporary conflist of the reference bridge and host-local plugins, and
// cnitool, in a "node" network namespace, builds "pod" namespaces with it.
package node_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
	build := exec.Command("go", "build", "-o", bins.shunt, "github.com/shunt-dev/shunt/cmd/shunt")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build shunt: %v\n%s", err, out)
		return 1
	}
	// cnitool is not packaged by Debian; it is built from the CNI module
	// at the version shunt's go.mod requires, outside shunt's module.
	install := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@v1.3.1")
	install.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build cnitool: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

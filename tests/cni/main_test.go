// Package cni_test runs shunt's CNI plugin the way a container runtime does:
// cnitool executes a chain of the reference bridge and host-local plugins
// followed by shunt-cni, inside a "node" network namespace, for a "pod"
// namespace the test creates.
package cni_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
	build := exec.Command("go", "build", "-o", filepath.Join(bins.pluginDir, "shunt-cni"), "github.com/shunt-dev/shunt/cmd/shunt")
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

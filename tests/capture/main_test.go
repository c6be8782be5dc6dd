// Package capture_test proves, with real connections between network
// namespaces, that shunt's capture sends traffic where the plan says.
package capture_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binaries built once for the whole package.
type binaries struct {
	shunt   string
	standin string
}

var bins binaries

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		// Tests skip themselves with the reason.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "shunt-capture-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins = binaries{shunt: filepath.Join(dir, "shunt"), standin: filepath.Join(dir, "origdst")}
	for out, pkg := range map[string]string{bins.shunt: "github.com/shunt-dev/shunt/cmd/shunt", bins.standin: "github.com/shunt-dev/shunt/tests/standin/origdst"} {
		if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	return m.Run()
}

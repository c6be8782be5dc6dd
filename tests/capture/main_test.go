// Package capture_test proves, with real connections between network
// namespaces, that shunt's capture sends traffic where the plan says.
package capture_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// binaries built once for the whole package.
type binaries struct {
	shunt    string
	standin  string
	squatter string
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
	bins = binaries{shunt: filepath.Join(dir, "shunt"), standin: filepath.Join(dir, "origdst"), squatter: filepath.Join(dir, "squatter")}
	for out, pkg := range map[string]string{
		bins.shunt:    "github.com/shunt-dev/shunt/cmd/shunt",
		bins.standin:  "github.com/shunt-dev/shunt/tests/standin/origdst",
		bins.squatter: "github.com/shunt-dev/shunt/tests/standin/squatter",
	} {
		if err := testenv.BuildPackage(out, pkg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

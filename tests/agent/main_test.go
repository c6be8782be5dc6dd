// Package agent_test runs `shunt run` in network namespaces against the
// behaviours of Kuma's ExternalService page: a pod whose traffic goes
// through an xDS-driven proxy stand-in, an "internet" with nginx posing as
// httpbin.org over TLS, and a ZoneEgress.
package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

type binaries struct{ shunt, meshproxy string }

var bins binaries

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // tests skip themselves with the reason
	}
	dir, err := os.MkdirTemp("", "shunt-agent-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The proxy stand-in runs as its own user and must be able to execute.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bins = binaries{shunt: filepath.Join(dir, "shunt"), meshproxy: filepath.Join(dir, "meshproxy")}
	for out, pkg := range map[string]string{bins.shunt: "github.com/shunt-dev/shunt/cmd/shunt", bins.meshproxy: "github.com/shunt-dev/shunt/tests/standin/meshproxy"} {
		if err := testenv.BuildPackage(out, pkg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

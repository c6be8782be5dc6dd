package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BuildShunt builds shunt's binary to path, for suites that run it as a
// user would (TestMain, before any test: it returns an error instead of
// failing a test).
func BuildShunt(path string) error {
	return goBuild(path, ShuntPackage)
}

// BuildShuntLean builds the lean build of shunt (-tags lean: the capture
// commands and the CNI plugin alone), as the init container and the CNI
// plugin ship it: static, stripped and -trimpath, as `make build` makes it
// (a cgo build is dynamically linked, which costs each process start
// about half a millisecond more, and the benchmarks time process starts).
func BuildShuntLean(path string) error { return buildShipped(path, "lean") }

// BuildShuntInit builds the init container's build of shunt (-tags
// lean,initcontainer: the lean build without the eBPF engine and the CNI
// plugin), static and stripped, as init-container/build.sh ships it.
func BuildShuntInit(path string) error { return buildShipped(path, "lean,initcontainer") }

// buildShipped builds shunt with tags as it ships: static, stripped and
// -trimpath.
func buildShipped(path, tags string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-tags", tags, "-ldflags", "-s -w", "-o", path, ShuntPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build shunt with -tags %s: %v\n%s", tags, err, out)
	}
	return nil
}

// BuildPackage builds a main package of this module to path.
func BuildPackage(path, pkg string) error { return goBuild(path, pkg) }

func goBuild(path, pkg string) error {
	if out, err := exec.Command("go", "build", "-o", path, pkg).CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// BuildCNITool installs cnitool into dir. Debian does not package it; it is
// built from the CNI module at the version shunt's go.mod requires, outside
// shunt's module.
func BuildCNITool(dir string) (string, error) {
	install := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@v1.3.1")
	install.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build cnitool: %v\n%s", err, out)
	}
	return filepath.Join(dir, "cnitool"), nil
}

// ShuntRules returns every line mentioning shunt in n's rules, for each
// iptables variant present, prefixed with the program that printed it, and
// the nftables engine's table as nft lists it: empty when shunt left
// nothing behind.
func (n *Netns) ShuntRules() string {
	n.t.Helper()
	var b strings.Builder
	for _, prog := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(prog); err != nil {
			continue
		}
		for _, l := range strings.Split(n.MustRun(prog), "\n") {
			if strings.Contains(strings.ToLower(l), "shunt") {
				fmt.Fprintf(&b, "%s: %s\n", prog, l)
			}
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		if out, err := n.Run("nft", "list", "table", "inet", "shunt"); err == nil {
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				fmt.Fprintf(&b, "nft: %s\n", l)
			}
		}
	}
	return b.String()
}

// ShuntPackage is shunt's main package.
const ShuntPackage = "github.com/shunt-dev/shunt/cmd/shunt"

// Program is a main package of this module that a suite runs.
type Program struct {
	// Path is set to where the program was built.
	Path *string
	// Name is the file name of the build, Pkg its import path.
	Name, Pkg string
}

// BuildAndRun is the body of a suite's TestMain (suite names the build
// directory). As root it builds the programs, once for every test, into a
// temporary directory that every user may enter (a proxy runs under its
// own user and must be able to execute its build), runs the tests and
// removes the directory. Otherwise it only runs the tests: they skip
// themselves with the reason.
func BuildAndRun(m *testing.M, suite string, progs ...Program) int {
	if os.Geteuid() != 0 {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "shunt-"+suite+"-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, p := range progs {
		*p.Path = filepath.Join(dir, p.Name)
		if err := goBuild(*p.Path, p.Pkg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

//go:build !lean

package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

var updateDocs = flag.Bool("update", false, "rewrite docs/cli.md")

// cliReference renders every command's help as the CLI reference, so the
// docs say exactly what --help says.
func cliReference() string {
	var b strings.Builder
	b.WriteString("# Command reference\n\n")
	b.WriteString("Generated from `shunt <command> --help` (`go test ./cmd/shunt -update` refreshes it).\n")
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		fmt.Fprintf(&b, "\n## %s\n\n", c.CommandPath())
		if c.Long != "" {
			b.WriteString(strings.TrimSpace(c.Long) + "\n\n")
		} else if c.Short != "" {
			b.WriteString(c.Short + ".\n\n")
		}
		b.WriteString("```\n" + strings.TrimRight(c.UsageString(), "\n") + "\n```\n")
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := newRootCommand()
	root.InitDefaultHelpCmd()
	walk(root)
	return b.String()
}

func TestCLIReferenceIsCurrent(t *testing.T) {
	const path = "../../docs/cli.md"
	got := cliReference()
	if *updateDocs {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./cmd/shunt -update writes it)", err)
	}
	if string(want) != got {
		t.Errorf("docs/cli.md is out of date with the commands' help: run go test ./cmd/shunt -update")
	}
}

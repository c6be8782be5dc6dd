package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Each command built alone is the command of the whole tree: same name,
// same flags, same help.
func TestCommandBuiltAloneIsTheSame(t *testing.T) {
	full := newRootCommand()
	for _, s := range subcommands() {
		want, _, err := full.Find([]string{s.name})
		if err != nil || want.Name() != s.name {
			t.Fatalf("the whole tree has no command %q (found %q, %v): is its subcommand name its Use?", s.name, want.Name(), err)
		}
		root, _ := newRootCommandFor([]string{s.name})
		got, _, err := root.Find([]string{s.name})
		if err != nil || got.Name() != s.name {
			t.Fatalf("newRootCommandFor(%q) has no such command (found %q, %v)", s.name, got.Name(), err)
		}
		if len(root.Commands()) != 1 {
			t.Errorf("newRootCommandFor(%q) built %d commands, want 1", s.name, len(root.Commands()))
		}
		if got.UsageString() != want.UsageString() {
			t.Errorf("%s built alone has another help:\n%s\nwant:\n%s", s.name, got.UsageString(), want.UsageString())
		}
	}
}

func TestCommandNameIsWhatCobraFinds(t *testing.T) {
	subs := subcommands()
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, ""},
		{[]string{"install"}, "install"},
		{[]string{"install", "--dry-run", "--netns", "/run/netns/x"}, "install"},
		{[]string{"--log-level", "debug", "status"}, "status"},
		{[]string{"--log-level=debug", "uninstall", "--netns", "x"}, "uninstall"},
		{[]string{"-h", "install"}, ""},
		{[]string{"install", "--help"}, ""},
		{[]string{"status", "-h"}, ""},
		{[]string{"install", "--dry-run", "--", "-h"}, "install"},
		{[]string{"help", "install"}, ""},
		{[]string{"completion", "bash"}, ""},
		{[]string{"__complete", "inst"}, ""},
		{[]string{"instal"}, ""},
		{[]string{"--version"}, ""},
		{[]string{"version", "extra"}, "version"},
		{[]string{"--", "install"}, ""},
	} {
		if got := commandName(c.args, subs); got != c.want {
			t.Errorf("commandName(%q) = %q, want %q", c.args, got, c.want)
		}
	}
}

// What a user sees is the same from the tree built for the command line
// as from the whole tree.
func TestTreeForArgsAnswersLikeTheWholeTree(t *testing.T) {
	run := func(root *cobra.Command, args []string) string {
		var out strings.Builder
		root.SetArgs(args)
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.Execute()
		return fmt.Sprintf("%s\nerr: %v", out.String(), err)
	}
	for _, args := range [][]string{
		nil, {"help"}, {"--help"}, {"-h"}, {"completion", "bash"}, {"__complete", "ins"}, {"__complete", "install", "--n"},
		{"install", "-h"}, {"-h", "install"}, {"--help", "status"}, {"--log-level", "debug", "-h", "version"},
		{"--", "install"}, {"status", "--bogus"}, {"--bogus", "install"}, {"version", "--help"}, {"version", "x"},
		{"instal"}, {"explain"}, {"help", "install"}, {"cni", "--help"}, {"install", "--log-level", "bogus"},
		{"explain", "--dst", "nope"}, {"install", "-o", "yaml"}, {"uninstall", "--help"},
	} {
		if got, want := run(first(newRootCommandFor(args)), args), run(newRootCommand(), args); got != want {
			t.Errorf("%q: the tree for the command line answers\n%s\nthe whole tree\n%s", args, got, want)
		}
	}
}

// first is the tree newRootCommandFor builds.
func first(root *cobra.Command, _ subcommand) *cobra.Command { return root }

package main

import (
	"testing"
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
		root := newRootCommandFor([]string{s.name})
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
		{[]string{"-h", "install"}, "install"},
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

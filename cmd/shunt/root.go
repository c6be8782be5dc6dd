package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// subcommand is one of shunt's commands, built only when it is needed.
type subcommand struct {
	name string // the first word of its Use
	new  func() *cobra.Command
	// server: the command runs until it is stopped, and has its signal
	// handlers from the start (the others are one-shot: notifyContext).
	server bool
}

// subcommands are every command of this build, in help order.
func subcommands() []subcommand {
	return append([]subcommand{
		{name: "install", new: newInstallCommand},
		{name: "uninstall", new: newUninstallCommand},
		{name: "status", new: newStatusCommand},
		{name: "explain", new: newExplainCommand},
		{name: "version", new: newVersionCommand},
	}, append(pluginCommands(), agentCommands()...)...)
}

// newRootCommand is the whole command tree (help, completion, docs).
func newRootCommand() *cobra.Command {
	root := newBareRoot()
	for _, s := range subcommands() {
		root.AddCommand(s.new())
	}
	return root
}

// newRootCommandFor is the command tree that runs args, and the command
// args name (the zero subcommand when none): when they name one of
// shunt's commands, the tree holds that one alone, without the others'
// flags, help texts and configuration tables, and without cobra's
// completion command. Building all of them (103 flags, 229 in the full
// build) was a measurable share of the start-up of every `shunt install`,
// which runs once per pod. Anything else (help, completion, an unknown
// command and its suggestions, no command) gets the whole tree.
func newRootCommandFor(args []string) (*cobra.Command, subcommand) {
	subs := subcommands()
	name := commandName(args, subs)
	for _, s := range subs {
		if s.name == name {
			root := newBareRoot()
			root.AddCommand(s.new())
			root.CompletionOptions.DisableDefaultCmd = true
			return root, s
		}
	}
	return newRootCommand(), subcommand{}
}

// commandName is the name of the command of subs that cobra finds in args
// ("" when none): the lookup is cobra's own, on a tree of placeholders that
// carry the root's flags, so flags before the command name are skipped
// exactly as when the real tree runs. A help flag anywhere gets "": cobra
// may answer it with the root's help, which lists every command.
func commandName(args []string, subs []subcommand) string {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--help" || strings.HasPrefix(a, "--help=") || len(a) > 1 && a[0] == '-' && a[1] != '-' && strings.ContainsRune(a, 'h') {
			return ""
		}
	}
	root := newBareRoot()
	root.InitDefaultHelpFlag()
	for _, s := range subs {
		root.AddCommand(&cobra.Command{Use: s.name, Run: func(*cobra.Command, []string) {}})
	}
	c, _, err := root.Find(args)
	if err != nil || c == root {
		return ""
	}
	for c.Parent() != root {
		c = c.Parent()
	}
	return c.Name()
}

func newBareRoot() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:           "shunt",
		Short:         "Capture a workload's traffic into the mesh proxy and answer its DNS",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(strings.ToUpper(logLevel))); err != nil {
				return usageErrorf("--log-level: unknown level %q (want debug, info, warn or error)", logLevel)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return root
}

package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func newRootCommand() *cobra.Command {
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
	root.AddCommand(
		newInstallCommand(),
		newUninstallCommand(),
		newStatusCommand(),
		newExplainCommand(),
		newVersionCommand(),
		newCNICommand(),
	)
	root.AddCommand(agentCommands()...)
	return root
}

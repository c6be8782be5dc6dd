package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newNodeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "node",
		Short: "Run the DaemonSet node agent",
		RunE:  func(*cobra.Command, []string) error { return errors.New("node: not implemented yet") },
	}
}

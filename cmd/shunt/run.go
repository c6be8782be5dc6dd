package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newRunCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Run the node agent: capture, DNS and egress control driven by xDS",
		RunE:  func(*cobra.Command, []string) error { return errors.New("run: not implemented yet") },
	}
}

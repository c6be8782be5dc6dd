package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newControlPlaneCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "controlplane",
		Short: "Serve mesh resources over xDS",
		RunE:  func(*cobra.Command, []string) error { return errors.New("controlplane: not implemented yet") },
	}
}

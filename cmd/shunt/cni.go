package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newCNICommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cni",
		Short: "Run as a chained CNI plugin",
		RunE:  func(*cobra.Command, []string) error { return errors.New("cni: not implemented yet") },
	}
}

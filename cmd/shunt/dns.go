package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newDNSCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "dns",
		Short: "Run the DNS interceptor",
		RunE:  func(*cobra.Command, []string) error { return errors.New("dns: not implemented yet") },
	}
}

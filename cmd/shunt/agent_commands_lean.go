//go:build lean

package main

import "github.com/spf13/cobra"

// agentCommands is empty in the lean build: it captures and serves as the
// CNI plugin, nothing else (see agent_commands.go).
func agentCommands() []*cobra.Command { return nil }

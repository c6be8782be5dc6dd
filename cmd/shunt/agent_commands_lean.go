//go:build lean

package main

// agentCommands is empty in the lean build: it captures and serves as the
// CNI plugin, nothing else (see agent_commands.go).
func agentCommands() []subcommand { return nil }

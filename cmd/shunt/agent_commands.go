//go:build !lean

package main

import "github.com/spf13/cobra"

// agentCommands are the long-running commands. They link the control plane,
// the xDS client, Envoy's protos, Prometheus and client-go, whose package
// initialisation a lean build (-tags lean: the init container's and the CNI
// plugin's binary) does not pay on every pod start.
func agentCommands() []*cobra.Command {
	return []*cobra.Command{
		newDNSCommand(),
		newControlPlaneCommand(),
		newRunCommand(),
		newNodeCommand(),
		newEnvoyBootstrapCommand(),
	}
}

//go:build !lean

package main

// agentCommands are the long-running commands. They link the control plane,
// the xDS client, Envoy's protos, Prometheus and client-go, whose package
// initialisation a lean build (-tags lean: the init container's and the CNI
// plugin's binary) does not pay on every pod start.
func agentCommands() []subcommand {
	return []subcommand{
		{name: "dns", server: true, new: newDNSCommand},
		{name: "controlplane", server: true, new: newControlPlaneCommand},
		{name: "run", server: true, new: newRunCommand},
		{name: "node", server: true, new: newNodeCommand},
		{name: "envoy-bootstrap", new: newEnvoyBootstrapCommand},
	}
}

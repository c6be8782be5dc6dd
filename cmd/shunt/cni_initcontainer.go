//go:build initcontainer

package main

import (
	"fmt"
	"os"
)

// The init container's build (-tags lean,initcontainer) installs and
// removes capture in its own pod and is never the CNI plugin: it leaves
// out the plugin, its Kubernetes API client (crypto/tls) and the eBPF
// engine the plugin enrols pods with, which a process that installs
// netfilter rules would otherwise initialise before main.

const cniBinaryName = "shunt-cni"

func pluginCommands() []subcommand { return nil }

func runCNIPlugin() {
	fmt.Fprintln(os.Stderr, "shunt-cni: this build of shunt is the init container's and is not the CNI plugin: install the lean build (make build writes it as build/shunt-cni)")
	os.Exit(1)
}

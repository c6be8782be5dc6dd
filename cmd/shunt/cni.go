package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/spf13/cobra"

	"github.com/shunt-dev/shunt/cni"
	"github.com/shunt-dev/shunt/node"
)

// cniBinaryName is the name the plugin is installed under in the CNI bin
// directory; invoked by that name, shunt is the plugin and nothing else.
const cniBinaryName = "shunt-cni"

func newCNICommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cni",
		Short: "Run as a chained CNI plugin",
		Long: `Run as a chained CNI plugin: the container runtime sets CNI_COMMAND and the
other CNI_* variables and writes the network configuration on standard input.
Installed in the CNI bin directory as shunt-cni (shunt node does this), the
binary behaves as this command whatever its arguments.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			runCNIPlugin()
			return nil
		},
	}
}

// runCNIPlugin serves one CNI command and exits: the result or the CNI
// error goes to standard output, logs to standard error.
func runCNIPlugin() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	p := &cni.Plugin{NewEngine: newEngine, Pods: node.KubePodLookup, Logger: slog.Default()}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions(), "shunt-cni: captures a pod's traffic into the mesh proxy")
}

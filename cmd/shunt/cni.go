//go:build !initcontainer

package main

import (
	"context"
	"errors"
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/spf13/cobra"

	"github.com/shunt-dev/shunt/cni"
	"github.com/shunt-dev/shunt/cni/kubeapi"
	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/ebpf"
)

// cniBinaryName is the name the plugin is installed under in the CNI bin
// directory; invoked by that name, shunt is the plugin and nothing else.
const cniBinaryName = "shunt-cni"

// pluginCommands are the CNI plugin's command, which the init container's
// build leaves out (cni_initcontainer.go).
func pluginCommands() []subcommand { return []subcommand{{name: "cni", new: newCNICommand}} }

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
	p := &cni.Plugin{NewEngine: cniEngine, Pods: kubeapi.PodLookup, Logger: slog.Default()}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions(), "shunt-cni: captures a pod's traffic into the mesh proxy")
}

// cniEngine is newEngine for the plugin and the node agent's repairs: with
// the eBPF engine, a pod is enrolled in the programs the node agent loaded
// once for the node (ebpf.OpenNode, where node says) rather than given
// programs of its own. Without them (no agent in eBPF mode), the pod gets
// its own, as before.
func cniEngine(cfg *redirect.Config, node cni.NodePaths) (redirect.Engine, error) {
	if cfg.Get("engine") != "ebpf" {
		return newEngine(cfg)
	}
	if cfg.Get("cgroup") == "" {
		// Enrol would otherwise resolve "" against the working directory.
		return nil, errors.New("engine ebpf: no pod cgroup: declare \"capabilities\": {\"cgroupPath\": true} in shunt's conflist entry so that the runtime passes it (a path in the systemd driver's slice:prefix:name form is not resolved)")
	}
	n, err := ebpf.OpenNode(ebpf.NodeOptions{PinDir: node.PinDir, StateDir: node.StateDir, Logger: slog.Default()})
	if err != nil {
		slog.Info("node-wide eBPF programs not available; the pod gets programs of its own", "reason", err)
		return newEngine(cfg)
	}
	// The pod's own engine is only built when needed: it probes the pod's
	// cgroup, which may be gone by DEL, when the node's programs can still
	// forget the pod.
	return &nodePodEngine{Engine: n.Engine(cfg.Get("cgroup"), cfg.Get("netns")), own: func() (redirect.Engine, error) { return newEngine(cfg) }}, nil
}

// nodePodEngine is a pod's share of the node's programs. A pod captured
// with programs of its own before the agent loaded the node's is still
// removed (and reported) through its own engine.
type nodePodEngine struct {
	redirect.Engine
	own func() (redirect.Engine, error)
}

func (e *nodePodEngine) Uninstall(ctx context.Context) error {
	err := e.Engine.Uninstall(ctx)
	if !errors.Is(err, redirect.ErrNotInstalled) {
		return err
	}
	own, oerr := e.own()
	if oerr != nil {
		// Enrolled nowhere, and no programs of its own can be found.
		slog.Debug("the pod's own eBPF engine", "err", oerr)
		return err
	}
	return own.Uninstall(ctx)
}

func (e *nodePodEngine) Status(ctx context.Context) (*redirect.Status, error) {
	st, err := e.Engine.Status(ctx)
	if !errors.Is(err, redirect.ErrNotInstalled) {
		return st, err
	}
	own, oerr := e.own()
	if oerr != nil {
		slog.Debug("the pod's own eBPF engine", "err", oerr)
		return st, err
	}
	return own.Status(ctx)
}

//go:build !lean

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/shunt-dev/shunt/cni"
	"github.com/shunt-dev/shunt/node"
	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/ebpf"
)

func newNodeCommand() *cobra.Command {
	var (
		o            node.Options
		pluginConfig string
		kubeconfig   string
		uninstall    bool
		bpfPinDir    string
		nodeStateDir string
	)
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run the DaemonSet node agent",
		Long: `Install shunt's CNI plugin on this node (as shunt-cni in the CNI bin
directory), chain it into the node's first .conflist, give it read access to
pod annotations, and capture pods that started before it was chained. With
--cleanup, the plugin is unchained and its files removed when the agent stops;
--uninstall does that at once and exits.`,
		Example: `  shunt node --node-name "$NODE_NAME" --plugin-config /etc/shunt/cni.json --cleanup
  shunt node --uninstall`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Repair != "install" && o.Repair != "report" && o.Repair != "off" {
				return usageErrorf("--repair: invalid value %q: want install, report or off", o.Repair)
			}
			o.Plugin = map[string]any{}
			if pluginConfig != "" {
				b, err := os.ReadFile(pluginConfig)
				if err != nil {
					return fmt.Errorf("read plugin config: %w", err)
				}
				if err := json.Unmarshal(b, &o.Plugin); err != nil {
					return fmt.Errorf("parse plugin config %s: %w", pluginConfig, err)
				}
			}
			// The plugin must open the programs where the agent pins them:
			// a flag given here is passed on in the conflist entry.
			nodeOpts := ebpf.NodeOptions{PinDir: bpfPinDir, StateDir: nodeStateDir, Logger: slog.Default()}
			for _, d := range []struct {
				flag, key string
				dir       *string
			}{{"bpf-pin-dir", "nodePinDir", &nodeOpts.PinDir}, {"node-state-dir", "nodeStateDir", &nodeOpts.StateDir}} {
				if cmd.Flags().Changed(d.flag) {
					o.Plugin[d.key] = *d.dir
				} else if v, ok := o.Plugin[d.key].(string); ok && v != "" {
					*d.dir = v
				}
			}
			if uninstall {
				if err := node.Uninstall(o); err != nil {
					return err
				}
				slog.Info("plugin removed", "confDir", o.CNIConfDir, "binDir", o.CNIBinDir)
				// The node-wide eBPF programs, and every pod's links to them.
				if err := ebpf.UninstallNode(cmd.Context(), nodeOpts); err != nil && !errors.Is(err, redirect.ErrNotInstalled) {
					return fmt.Errorf("remove the node's eBPF programs: %w", err)
				}
				return nil
			}
			// Refuse now what every ADD would refuse later.
			check := map[string]any{"cniVersion": "1.0.0", "name": "check", "type": node.PluginType}
			for k, v := range o.Plugin {
				check[k] = v
			}
			b, _ := json.Marshal(check)
			if _, err := cni.ParseConf(b); err != nil {
				return fmt.Errorf("plugin config %s: %w", pluginConfig, err)
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own binary: %w", err)
			}
			o.Binary = pluginBinary(exe)
			// In eBPF mode the programs are loaded once, here, and the
			// plugin enrols each pod's cgroup in them.
			if pluginEngine(o.Plugin) == "ebpf" {
				n, err := ebpf.NewNode(nodeOpts)
				if err != nil {
					return fmt.Errorf("load the node's eBPF programs: %w", err)
				}
				defer n.Close()
			}
			o.CNI = &cni.Plugin{NewEngine: cniEngine, Logger: slog.Default()}
			o.Logger = slog.Default()
			rc, err := kubeRESTConfig(kubeconfig)
			if err != nil {
				return err
			}
			if rc != nil {
				if o.Client, err = kubernetes.NewForConfig(rc); err != nil {
					return fmt.Errorf("kubernetes client: %w", err)
				}
				// The plugin gets the agent's credentials, re-read every
				// interval: kubelet rotates the service account token.
				if kubeconfig != "" {
					o.Kubeconfig = func() ([]byte, error) { return node.FlattenKubeconfig(kubeconfig) }
				} else {
					host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
					o.Kubeconfig = func() ([]byte, error) {
						return node.InClusterKubeconfig(host, port, "/var/run/secrets/kubernetes.io/serviceaccount")
					}
				}
			}
			if o.NodeName == "" && o.Client != nil {
				return usageErrorf("--node-name (or NODE_NAME) is required to repair pods")
			}
			return node.Run(cmd.Context(), o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	fs.StringVar(&o.PluginConfDir, "host-cni-conf-dir", "", "the CNI configuration directory as the runtime on the host sees it, when the agent mounts it elsewhere (default: --cni-conf-dir)")
	fs.StringVar(&o.BackupDir, "backup-dir", "/var/lib/shunt/cni-backup", "where the original conflist is kept until the plugin is removed")
	fs.StringVar(&pluginConfig, "plugin-config", "", "JSON file with shunt's conflist entry: capture, excludeNamespaces, defaultCapture, stateDir...")
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig for the agent outside a cluster, also given to the plugin, flattened (default: in-cluster service account, if any)")
	fs.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name, to list its pods (env NODE_NAME)")
	fs.StringVar(&o.ProcRoot, "proc", "/proc", "the host's /proc, to find pods' network namespaces (needs hostPID)")
	fs.StringVar(&o.Repair, "repair", "install", "pods running without capture: install, report or off")
	fs.DurationVar(&o.Interval, "interval", 10*time.Second, "how often the chaining is checked and pods are scanned")
	fs.StringVar(&o.HealthAddr, "health-addr", "", "serve /healthz and /readyz (ready once the plugin is chained) on this address (default: off)")
	fs.BoolVar(&o.Cleanup, "cleanup", false, "unchain the plugin and remove its files when the agent stops (SIGTERM)")
	fs.StringVar(&bpfPinDir, "bpf-pin-dir", "", "where the node-wide eBPF programs are pinned (on a bpffs), with the eBPF engine; passed to the plugin as nodePinDir (default: the plugin config's nodePinDir, else "+ebpf.DefaultNodePinDir+")")
	fs.StringVar(&nodeStateDir, "node-state-dir", "", "where the pods enrolled in the node-wide eBPF programs are recorded; passed to the plugin as nodeStateDir (default: the plugin config's nodeStateDir, else "+ebpf.DefaultNodeStateDir+")")
	fs.BoolVar(&uninstall, "uninstall", false, "unchain the plugin, restore the original conflist, remove the plugin binary, and exit")
	return cmd
}

// pluginEngine is the capture engine the plugin's configuration names.
func pluginEngine(plugin map[string]any) string {
	capture, _ := plugin["capture"].(map[string]any)
	engine, _ := capture["engine"].(string)
	return engine
}

// kubeRESTConfig returns the agent's API credentials: the kubeconfig given,
// else the in-cluster service account; nil outside a cluster.
func kubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig: %w", err)
		}
		return rc, nil
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	return rc, nil
}

// pluginBinary is what the agent installs as the CNI plugin: the lean build
// (make build's build/shunt-cni, -tags lean) where it lies beside the
// agent's own binary, since the runtime starts the plugin once per pod and
// the lean build starts in a fraction of the time; else the agent's binary,
// which serves as the plugin too.
func pluginBinary(exe string) string {
	lean := filepath.Join(filepath.Dir(exe), cniBinaryName)
	if lean == exe {
		return exe
	}
	if fi, err := os.Stat(lean); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		slog.Info("installing the lean plugin build", "binary", lean)
		return lean
	}
	return exe
}

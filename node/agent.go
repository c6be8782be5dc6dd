package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"k8s.io/client-go/kubernetes"

	"github.com/shunt-dev/shunt/cni"
)

// Options configure the node agent.
type Options struct {
	// Binary is the shunt executable to install as the plugin.
	Binary string
	// CNIBinDir and CNIConfDir are the node's (mounted from the host).
	CNIBinDir  string
	CNIConfDir string
	// PluginConfDir is CNIConfDir as the plugin, run by the runtime on the
	// host, sees it ("" = CNIConfDir). The agent's pod mounts the host's
	// directory elsewhere, and the conflist must name the host's path.
	PluginConfDir string
	// BackupDir keeps the original conflist, on a host path that outlives
	// the agent's pod.
	BackupDir string
	// Plugin is shunt's entry in the conflist (the "capture" object and
	// the plugin's own keys); "type" is set by the agent.
	Plugin map[string]any
	// Kubeconfig returns the kubeconfig written for the plugin (nil = no
	// annotation lookups from the plugin). It is called again every
	// Interval, so a rotated service account token reaches the plugin.
	Kubeconfig func() ([]byte, error)
	// Client, when set, lets the agent repair pods on NodeName.
	Client   kubernetes.Interface
	NodeName string
	ProcRoot string
	// Repair is "install" (capture pods that escaped the plugin), "report"
	// (log them) or "off".
	Repair   string
	Interval time.Duration
	// HealthAddr, when set, serves /healthz (the agent runs) and /readyz
	// (the plugin is installed and chained).
	HealthAddr string
	// Cleanup unchains the plugin and removes its files when ctx ends.
	Cleanup bool
	// Plugin runs installs for repairs the way the CNI plugin does.
	CNI    *cni.Plugin
	Logger *slog.Logger
}

// KubeconfigName is the file the agent writes beside the conflist.
const KubeconfigName = "shunt-kubeconfig"

func (o *Options) pluginEntry() map[string]any {
	entry := map[string]any{}
	for k, v := range o.Plugin {
		entry[k] = v
	}
	if o.Kubeconfig != nil {
		dir := o.PluginConfDir
		if dir == "" {
			dir = o.CNIConfDir
		}
		entry["kubeconfig"] = filepath.Join(dir, KubeconfigName)
	}
	return entry
}

// writeKubeconfig writes the plugin's kubeconfig when it differs from what
// was last written.
func (o *Options) writeKubeconfig(last []byte) ([]byte, error) {
	if o.Kubeconfig == nil {
		return nil, nil
	}
	b, err := o.Kubeconfig()
	if err != nil {
		return last, fmt.Errorf("build plugin kubeconfig: %w", err)
	}
	if bytes.Equal(b, last) {
		return last, nil
	}
	if err := writeAtomic(filepath.Join(o.CNIConfDir, KubeconfigName), b, 0o600); err != nil {
		return last, fmt.Errorf("write plugin kubeconfig: %w", err)
	}
	return b, nil
}

// Run installs the plugin, keeps it chained (the primary CNI may rewrite
// its configuration at any time) and repairs pods until ctx ends.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.Interval == 0 {
		o.Interval = 10 * time.Second
	}
	h := &health{reason: "plugin not installed yet"}
	if o.HealthAddr != "" {
		stop, err := serveHealth(ctx, o.HealthAddr, h, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	if err := InstallBinary(o.Binary, o.CNIBinDir); err != nil {
		return err
	}
	log.Info("plugin installed", "path", filepath.Join(o.CNIBinDir, PluginType))
	// Written before the plugin is chained: the first ADD reads it.
	kubeconfig, err := o.writeKubeconfig(nil)
	if err != nil {
		return err
	}
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	waiting := false
	for {
		if kubeconfig, err = o.writeKubeconfig(kubeconfig); err != nil {
			log.Error("refresh plugin kubeconfig", "err", err)
		}
		path, changed, err := Chain(o.CNIConfDir, o.BackupDir, o.pluginEntry())
		switch {
		case errors.Is(err, ErrNoConflist):
			if !waiting {
				log.Info("waiting for the primary CNI's configuration", "dir", o.CNIConfDir)
			}
			waiting = true
			h.set("waiting for the primary CNI's configuration in " + o.CNIConfDir)
		case err != nil:
			log.Error("chain plugin", "err", err)
			h.set("chain plugin: " + err.Error())
		default:
			waiting = false
			h.set("")
			if changed {
				log.Info("plugin chained", "conflist", path)
			}
			repair(ctx, o, log)
		}
		select {
		case <-ctx.Done():
			if o.Cleanup {
				// The pod is going: its context is done, the cleanup is not.
				return Uninstall(o)
			}
			return nil
		case <-tick.C:
		}
	}
}

func repair(ctx context.Context, o Options, log *slog.Logger) {
	if o.Client == nil || o.Repair == "off" || o.Repair == "" {
		return
	}
	stateDir := cni.DefaultStateDir
	if s, ok := o.Plugin["stateDir"].(string); ok && s != "" {
		stateDir = s
	}
	def := true
	if b, ok := o.Plugin["defaultCapture"].(bool); ok {
		def = b
	}
	var excluded []string
	if l, ok := o.Plugin["excludeNamespaces"].([]any); ok {
		for _, x := range l {
			if s, ok := x.(string); ok {
				excluded = append(excluded, s)
			}
		}
	}
	if o.CNI != nil {
		if err := o.CNI.PruneGone(ctx, stateDir, "repair-"); err != nil {
			log.Warn("prune repaired pods", "err", err)
		}
	}
	r := &Repairer{Client: o.Client, NodeName: o.NodeName, ProcRoot: o.ProcRoot, StateDir: stateDir, DefaultCapture: def, ExcludeNamespaces: excluded}
	found, err := r.Scan(ctx)
	if err != nil {
		log.Warn("scan pods for repair", "err", err)
		return
	}
	for _, f := range found {
		if f.Problem != "" || o.Repair == "report" || o.CNI == nil {
			log.Warn("pod is not captured", "pod", f.Pod, "netns", f.Netns, "problem", f.Problem)
			continue
		}
		if err := RepairPod(ctx, o.CNI, o.pluginEntry(), f); err != nil {
			log.Error("repair pod", "pod", f.Pod, "err", err)
			continue
		}
		log.Info("pod repaired: capture installed", "pod", f.Pod, "netns", f.Netns)
	}
}

// RepairPod installs capture in a pod's namespace the way ADD would, under
// the container ID repair-<pod UID>.
func RepairPod(ctx context.Context, p *cni.Plugin, entry map[string]any, f Finding) error {
	conf := map[string]any{"cniVersion": "1.0.0", "name": "shunt-repair"}
	for k, v := range entry {
		conf[k] = v
	}
	conf["type"] = PluginType
	if f.Cgroup != "" {
		// What the runtime would pass: the eBPF engine attaches there.
		conf["runtimeConfig"] = map[string]any{"cgroupPath": f.Cgroup}
	}
	// The settings were read already; the plugin asks this lookup for them.
	conf["kubeconfig"] = "(read by the node agent)"
	data, err := json.Marshal(conf)
	if err != nil {
		return err
	}
	pods := *p
	pods.Pods = func(context.Context, string, string, string) (*cni.PodSettings, error) { return f.Settings, nil }
	return pods.Install(ctx, &skel.CmdArgs{
		ContainerID: "repair-" + f.UID,
		Netns:       f.Netns,
		IfName:      "eth0",
		Args:        fmt.Sprintf("K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s", f.Settings.Namespace, f.Settings.Name),
		StdinData:   data,
	})
}

// Uninstall unchains the plugin and removes its binary and kubeconfig. Pods
// keep the capture they have; new pods get none.
func Uninstall(o Options) error {
	var errs []error
	if err := Unchain(o.CNIConfDir, o.BackupDir); err != nil {
		errs = append(errs, fmt.Errorf("unchain: %w", err))
	}
	for _, p := range []string{filepath.Join(o.CNIBinDir, PluginType), filepath.Join(o.CNIConfDir, KubeconfigName)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// InClusterKubeconfig builds a kubeconfig for the plugin from the agent's
// service account, so the plugin (run by the runtime on the host) can read
// pod annotations with the agent's read-only rights.
func InClusterKubeconfig(host, port, saDir string) ([]byte, error) {
	token, err := os.ReadFile(filepath.Join(saDir, "token"))
	if err != nil {
		return nil, fmt.Errorf("read service account token: %w", err)
	}
	ca, err := os.ReadFile(filepath.Join(saDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("read service account CA: %w", err)
	}
	cfg := map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []any{map[string]any{"name": "local", "cluster": map[string]any{
			"server":                     "https://" + joinHostPort(host, port),
			"certificate-authority-data": ca,
		}}},
		"users":           []any{map[string]any{"name": "shunt-cni", "user": map[string]any{"token": string(token)}}},
		"contexts":        []any{map[string]any{"name": "shunt-cni", "context": map[string]any{"cluster": "local", "user": "shunt-cni"}}},
		"current-context": "shunt-cni",
	}
	return json.MarshalIndent(cfg, "", "  ")
}

func joinHostPort(host, port string) string {
	if len(host) > 0 && host[0] != '[' && containsColon(host) {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

func containsColon(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return true
		}
	}
	return false
}

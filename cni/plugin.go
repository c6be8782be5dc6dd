package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/shunt-dev/shunt/redirect"
)

// PodLookup reads a pod's and its namespace's shunt settings from the
// Kubernetes API, with the credentials of a kubeconfig file.
type PodLookup func(ctx context.Context, kubeconfig, namespace, name string) (*PodSettings, error)

// NodePaths say where the node agent keeps the node-wide eBPF programs
// (PinDir) and its record of each enrolled pod (StateDir); "" is the
// agent's default.
type NodePaths struct {
	PinDir   string `json:"nodePinDir,omitempty"`
	StateDir string `json:"nodeStateDir,omitempty"`
}

// Plugin runs the CNI commands. The engine is chosen by the caller, so that
// the plugin and `shunt install` pick engines the same way.
type Plugin struct {
	// NewEngine returns the engine for a container's configuration; node
	// says where the node-wide eBPF programs are, for the eBPF engine.
	NewEngine func(cfg *redirect.Config, node NodePaths) (redirect.Engine, error)
	// Pods is consulted when the configuration has a kubeconfig and the
	// runtime names the pod (K8S_POD_NAMESPACE, K8S_POD_NAME).
	Pods   PodLookup
	Logger *slog.Logger
	// Timeout bounds one command (default 60 s): a runtime waits on us.
	Timeout time.Duration
}

// Funcs returns the command table for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// Versions are the CNI spec versions the plugin speaks.
func Versions() version.PluginInfo {
	return version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
}

// record is what the plugin keeps per container, beside the engine's own
// state, so DEL and CHECK know what ADD did.
type record struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName,omitempty"`
	Netns       string `json:"netns"`
	Pod         string `json:"pod,omitempty"`
	Captured    bool   `json:"captured"`
	Reason      string `json:"reason,omitempty"`
	Engine      string `json:"engine,omitempty"`
	Cgroup      string `json:"cgroup,omitempty"`
	// Node is where the node's programs were when ADD ran: DEL must find
	// them even when its configuration cannot be read.
	Node    NodePaths `json:"node,omitzero"`
	AddedAt time.Time `json:"addedAt"`
}

const recordFile = "cni.json"

// validContainerID says whether id matches ^[A-Za-z0-9][A-Za-z0-9_.-]*$, the
// form the runtime's container IDs take (and a safe directory name). It is
// not a regexp: compiling one at package initialisation cost every start
// of the plugin.
func validContainerID(id string) bool {
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return false
		}
	}
	return id != ""
}

func (p *Plugin) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

func (p *Plugin) context() (context.Context, context.CancelFunc) {
	d := p.Timeout
	if d == 0 {
		d = 60 * time.Second
	}
	return context.WithTimeout(context.Background(), d)
}

func containerDir(conf *NetConf, id string) (string, error) {
	if !validContainerID(id) {
		return "", types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_CONTAINERID", fmt.Sprintf("%q: want letters, digits, '_', '.', '-'", id))
	}
	return filepath.Join(conf.StateDir, id), nil
}

// Add installs capture in the container's namespace and passes the previous
// plugin's result on.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	ctx, cancel := p.context()
	defer cancel()
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid shunt configuration", err.Error())
	}
	result, err := prevResult(conf)
	if err != nil {
		return err
	}
	if err := p.install(ctx, conf, args); err != nil {
		return err
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// Install does what ADD does, without a result to print: the node agent
// uses it to capture pods that started before the plugin was chained.
func (p *Plugin) Install(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid shunt configuration", err.Error())
	}
	return p.install(ctx, conf, args)
}

func (p *Plugin) install(ctx context.Context, conf *NetConf, args *skel.CmdArgs) error {
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "no network namespace", "CNI_NETNS is empty")
	}
	dir, err := containerDir(conf, args.ContainerID)
	if err != nil {
		return err
	}
	rec := &record{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, AddedAt: time.Now().UTC()}
	cfg, reason, err := p.podConfig(ctx, conf, args, rec)
	if err != nil {
		return err
	}
	log := p.log().With("container", args.ContainerID, "netns", args.Netns, "pod", rec.Pod)
	if cfg == nil {
		rec.Reason = reason
		log.Info("pod not captured", "reason", reason)
		if err := writeRecord(dir, rec); err != nil {
			return types.NewError(types.ErrIOFailure, "record container", err.Error())
		}
		return nil
	}
	plan, err := cfg.Plan(redirect.OSHost{})
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid capture configuration", err.Error())
	}
	eng, err := p.NewEngine(cfg, conf.Node())
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "capture engine", err.Error())
	}
	if err := eng.Install(ctx, plan); err != nil {
		_ = os.RemoveAll(dir)
		return types.NewError(types.ErrInternal, "install capture", err.Error())
	}
	rec.Captured, rec.Engine, rec.Cgroup, rec.Node = true, eng.Name(), cfg.Get("cgroup"), conf.Node()
	if err := writeRecord(dir, rec); err != nil {
		// Without the record DEL could not find what to remove: undo.
		_ = eng.Uninstall(ctx)
		_ = os.RemoveAll(dir)
		return types.NewError(types.ErrIOFailure, "record container", err.Error())
	}
	log.Info("capture installed", "engine", eng.Name())
	return nil
}

// podConfig builds the container's capture configuration; nil means the pod
// is not captured, for the reason returned.
func (p *Plugin) podConfig(ctx context.Context, conf *NetConf, args *skel.CmdArgs, rec *record) (*redirect.Config, string, error) {
	cniArgs := parseArgs(args.Args)
	ns, name := cniArgs["K8S_POD_NAMESPACE"], cniArgs["K8S_POD_NAME"]
	if ns != "" {
		rec.Pod = ns + "/" + name
	}
	if ns != "" && containsString(conf.ExcludeNamespaces, ns) {
		return nil, "namespace " + ns + " is excluded", nil
	}
	cfg := conf.captureCopy()
	capture := conf.captureDefault()
	if conf.Kubeconfig != "" && ns != "" && name != "" && p.Pods != nil {
		s, err := p.Pods(ctx, conf.Kubeconfig, ns, name)
		if err != nil {
			return nil, "", types.NewError(types.ErrTryAgainLater, "read pod settings from the Kubernetes API", err.Error())
		}
		if capture, err = s.Captured(capture); err != nil {
			return nil, "", types.NewError(types.ErrInvalidNetworkConfig, "invalid pod annotation", err.Error())
		}
		if capture {
			if err := ApplyAnnotations(cfg, *s); err != nil {
				return nil, "", types.NewError(types.ErrInvalidNetworkConfig, "invalid pod annotation", err.Error())
			}
		}
	}
	if !capture {
		return nil, AnnotationCapture + " is false", nil
	}
	if err := cfg.Set("netns", args.Netns, "CNI_NETNS"); err != nil {
		return nil, "", types.NewError(types.ErrInternal, "configure", err.Error())
	}
	dir, _ := containerDir(conf, args.ContainerID)
	_ = cfg.Set("stateDir", dir, "plugin")
	// The pod's resolv.conf is written after the sandbox's network, so the
	// plugin cannot know its nameservers: capture all DNS unless told.
	if !cfg.IsSet("redirectDNS") && !cfg.IsSet("redirectAllDNS") && !cfg.IsSet("noDNS") {
		_ = cfg.Set("redirectAllDNS", "true", "plugin default")
	}
	if rc := conf.RuntimeConfig; rc != nil && strings.HasPrefix(rc.CgroupPath, "/") {
		_ = cfg.Set("cgroup", filepath.Join(conf.CgroupRoot, rc.CgroupPath), "runtimeConfig cgroupPath")
	}
	return cfg, "", nil
}

// captureCopy returns a fresh copy of the configured capture settings, so
// annotations of one pod never leak into the NetConf.
func (c *NetConf) captureCopy() *redirect.Config {
	cfg := redirect.NewConfig()
	for k, v := range c.capture.Values() {
		if c.capture.IsSet(k) {
			_ = cfg.Set(k, v, "network configuration")
		}
	}
	return cfg
}

func parseArgs(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

func prevResult(conf *NetConf) (types.Result, error) {
	if conf.RawPrevResult == nil {
		// First in a chain (or alone): an empty result of our version.
		return &current.Result{CNIVersion: current.ImplementedSpecVersion}, nil
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "parse prevResult", err.Error())
	}
	return conf.PrevResult, nil
}

// Del removes what Add installed. It succeeds for a container it does not
// know, and when the namespace is already gone (its rules went with it).
func (p *Plugin) Del(args *skel.CmdArgs) error {
	ctx, cancel := p.context()
	defer cancel()
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		// DEL must clean up even when the configuration was since broken;
		// only the state directory matters here.
		conf = lenientConf(args.StdinData)
	}
	dir, err := containerDir(conf, args.ContainerID)
	if err != nil {
		return err
	}
	return p.remove(ctx, dir)
}

func (p *Plugin) remove(ctx context.Context, dir string) error {
	rec, err := readRecord(dir)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "read container record", err.Error())
	}
	if rec == nil {
		return nil
	}
	log := p.log().With("container", rec.ContainerID, "pod", rec.Pod)
	if rec.Captured {
		if _, err := os.Stat(rec.Netns); err != nil && rec.Engine != "ebpf" {
			log.Info("network namespace gone; its rules went with it", "netns", rec.Netns)
		} else {
			eng, err := p.engineFor(rec, dir)
			if err != nil {
				return types.NewError(types.ErrInternal, "capture engine", err.Error())
			}
			if err := eng.Uninstall(ctx); err != nil && !errors.Is(err, redirect.ErrNotInstalled) {
				return types.NewError(types.ErrInternal, "remove capture", err.Error())
			}
			log.Info("capture removed", "engine", rec.Engine)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return types.NewError(types.ErrIOFailure, "remove container record", err.Error())
	}
	return nil
}

func (p *Plugin) engineFor(rec *record, dir string) (redirect.Engine, error) {
	cfg := redirect.NewConfig()
	if err := cfg.Set("engine", rec.Engine, "record"); err != nil {
		return nil, err
	}
	if _, err := os.Stat(rec.Netns); err == nil {
		_ = cfg.Set("netns", rec.Netns, "record")
	}
	_ = cfg.Set("stateDir", dir, "record")
	if rec.Cgroup != "" {
		_ = cfg.Set("cgroup", rec.Cgroup, "record")
	}
	return p.NewEngine(cfg, rec.Node)
}

// Check verifies that a captured container's rules are installed and have
// not drifted.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	ctx, cancel := p.context()
	defer cancel()
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid shunt configuration", err.Error())
	}
	if _, err := prevResult(conf); err != nil {
		return err
	}
	dir, err := containerDir(conf, args.ContainerID)
	if err != nil {
		return err
	}
	rec, err := readRecord(dir)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "read container record", err.Error())
	}
	if rec == nil {
		return types.NewError(types.ErrUnknownContainer, "shunt has no record of this container", args.ContainerID)
	}
	if !rec.Captured {
		return nil
	}
	eng, err := p.engineFor(rec, dir)
	if err != nil {
		return types.NewError(types.ErrInternal, "capture engine", err.Error())
	}
	st, err := eng.Status(ctx)
	if errors.Is(err, redirect.ErrNotInstalled) || (err == nil && !st.Installed && len(st.Drift) == 0) {
		return types.NewError(types.ErrInternal, "capture is not installed", "netns "+rec.Netns)
	}
	if err != nil {
		return types.NewError(types.ErrInternal, "read capture status", err.Error())
	}
	if len(st.Drift) > 0 {
		return types.NewError(types.ErrInternal, "capture rules drifted", strings.Join(st.Drift, "; "))
	}
	return nil
}

// GC removes the records, and rules, of containers the runtime no longer
// lists as valid attachments.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	ctx, cancel := p.context()
	defer cancel()
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid shunt configuration", err.Error())
	}
	valid := map[string]bool{}
	for _, a := range conf.ValidAttachments {
		valid[a.ContainerID] = true
	}
	entries, err := os.ReadDir(conf.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return types.NewError(types.ErrIOFailure, "list container records", err.Error())
	}
	var errs []string
	for _, e := range entries {
		if !e.IsDir() || valid[e.Name()] || !validContainerID(e.Name()) {
			continue
		}
		if err := p.remove(ctx, filepath.Join(conf.StateDir, e.Name())); err != nil {
			errs = append(errs, e.Name()+": "+err.Error())
		}
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrInternal, "garbage-collect containers", strings.Join(errs, "; "))
	}
	return nil
}

// Status reports whether the plugin can serve ADD: its state directory must
// be writable.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid shunt configuration", err.Error())
	}
	if err := os.MkdirAll(conf.StateDir, 0o700); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "state directory is not writable", err.Error())
	}
	return nil
}

func lenientConf(data []byte) *NetConf {
	var c NetConf
	_ = json.Unmarshal(data, &c)
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		c.StateDir = DefaultStateDir
	}
	return &c
}

func writeRecord(dir string, rec *record) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+recordFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, recordFile)); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

func readRecord(dir string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, recordFile), err)
	}
	return &r, nil
}

// PruneGone forgets the containers whose ID starts with prefix and whose
// namespace no longer exists. The runtime never sends DEL for pods the node
// agent captured itself; their namespaces vanish with the pod instead.
func (p *Plugin) PruneGone(ctx context.Context, stateDir, prefix string) error {
	dirs, err := filepath.Glob(filepath.Join(stateDir, prefix+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		rec, err := readRecord(dir)
		if err != nil || rec == nil {
			continue
		}
		if _, err := os.Stat(rec.Netns); err == nil {
			continue
		}
		if err := p.remove(ctx, dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

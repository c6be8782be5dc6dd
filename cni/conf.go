package cni

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/shunt-dev/shunt/internal/confnode"
	"github.com/shunt-dev/shunt/redirect"
)

// DefaultStateDir holds one directory per container the plugin captured.
const DefaultStateDir = "/run/shunt/cni"

// NetConf is the plugin's entry in a network configuration list:
//
//	{
//	  "type": "shunt-cni",
//	  "stateDir": "/run/shunt/cni",
//	  "kubeconfig": "/etc/cni/net.d/shunt-kubeconfig",
//	  "defaultCapture": true,
//	  "excludeNamespaces": ["kube-system"],
//	  "capture": {"outboundPort": 15001, "excludeOutboundPorts": [22]}
//	}
//
// The capture object holds the keys of shunt's capture configuration file;
// everything about the plugin itself is at the top level.
type NetConf struct {
	types.PluginConf
	// StateDir is where each container's record is kept.
	StateDir string `json:"stateDir,omitempty"`
	// LockDir is where earlier builds kept their per-namespace lock
	// files, still honoured where they exist (default
	// redirect.DefaultLockDir); the lock itself is the namespace's file.
	LockDir string `json:"lockDir,omitempty"`
	// Kubeconfig, when set, lets the plugin read the pod's and its
	// namespace's annotations.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// DefaultCapture decides for pods that neither they nor their
	// namespace annotate with shunt.dev/capture (default true).
	DefaultCapture *bool `json:"defaultCapture,omitempty"`
	// ExcludeNamespaces are never captured.
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// CgroupRoot is where the runtime's cgroupPath is found (eBPF engine).
	CgroupRoot string `json:"cgroupRoot,omitempty"`
	// NodePinDir and NodeStateDir are where the node agent pins the
	// node-wide eBPF programs and records each enrolled pod ("" = the
	// defaults of shunt node, /sys/fs/bpf/shunt/node and /run/shunt/node).
	// They must name what the agent uses, as the runtime on the host sees it.
	NodePinDir    string         `json:"nodePinDir,omitempty"`
	NodeStateDir  string         `json:"nodeStateDir,omitempty"`
	LogLevel      string         `json:"logLevel,omitempty"`
	RuntimeConfig *RuntimeConfig `json:"runtimeConfig,omitempty"`
	Args          *struct {
		CNI map[string]any `json:"cni,omitempty"`
	} `json:"args,omitempty"`

	// capture is the configuration built from defaults and the capture
	// object, before per-pod annotations.
	capture *redirect.Config
}

// RuntimeConfig is what the runtime passes for the capabilities the plugin
// declares.
type RuntimeConfig struct {
	// CgroupPath is the pod sandbox's cgroup (the cgroupPath capability),
	// which the eBPF engine attaches to.
	CgroupPath string `json:"cgroupPath,omitempty"`
}

// knownTopLevel are the keys a plugin configuration may have: the CNI
// spec's and shunt's own.
var knownTopLevel = []string{
	"cniVersion", "name", "type", "capabilities", "ipam", "dns", "prevResult", "runtimeConfig", "args",
	"cni.dev/valid-attachments",
	"stateDir", "lockDir", "kubeconfig", "defaultCapture", "excludeNamespaces", "cgroupRoot", "nodePinDir", "nodeStateDir", "logLevel", "capture",
}

// ParseConf decodes the plugin configuration strictly: unknown keys at the
// top level or in the capture object are errors, so a misspelt option is
// not silently ignored.
func ParseConf(data []byte) (*NetConf, error) {
	root, err := confnode.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("parse network configuration: %w", err)
	}
	if root == nil || root.Kind != confnode.Mapping {
		return nil, fmt.Errorf("parse network configuration: want a JSON object")
	}
	cfg := redirect.NewConfig()
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value == "capture" {
			if err := cfg.LoadNode("capture", v); err != nil {
				return nil, err
			}
			continue
		}
		if !containsString(knownTopLevel, k.Value) {
			if _, isCapture := optionKey(k.Value); isCapture {
				return nil, fmt.Errorf("network configuration: %q is a capture key: put it in the \"capture\" object", k.Value)
			}
			return nil, fmt.Errorf("network configuration: unknown key %q", k.Value)
		}
	}
	for _, k := range nodeOnlyKeys {
		if k == "iptablesBackend" || k == "resolvConf" {
			continue // legitimately node-wide, so the plugin's configuration may set them
		}
		if cfg.IsSet(k) {
			return nil, fmt.Errorf("capture: %s: set by the plugin for each container; remove it", k)
		}
	}
	var conf NetConf
	if err := json.Unmarshal(data, &conf); err != nil {
		return nil, fmt.Errorf("parse network configuration: %w", err)
	}
	if conf.StateDir == "" {
		conf.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(conf.StateDir) {
		return nil, fmt.Errorf("network configuration: stateDir %q: want an absolute path", conf.StateDir)
	}
	for _, d := range []struct{ key, path string }{{"nodePinDir", conf.NodePinDir}, {"nodeStateDir", conf.NodeStateDir}} {
		if d.path != "" && !filepath.IsAbs(d.path) {
			return nil, fmt.Errorf("network configuration: %s %q: want an absolute path", d.key, d.path)
		}
	}
	if conf.CgroupRoot == "" {
		conf.CgroupRoot = "/sys/fs/cgroup"
	}
	switch strings.ToLower(conf.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		return nil, fmt.Errorf("network configuration: logLevel %q: want debug, info, warn or error", conf.LogLevel)
	}
	conf.capture = cfg
	return &conf, nil
}

func optionKey(key string) (redirect.Option, bool) {
	for _, o := range redirect.Options() {
		if o.Key == key {
			return o, true
		}
	}
	return redirect.Option{}, false
}

// Node is where the node-wide eBPF programs and pod records are.
func (c *NetConf) Node() NodePaths { return NodePaths{PinDir: c.NodePinDir, StateDir: c.NodeStateDir} }

// captureDefault reports whether pods without a decision are captured.
func (c *NetConf) captureDefault() bool { return c.DefaultCapture == nil || *c.DefaultCapture }

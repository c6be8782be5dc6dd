package redirect

import (
	"context"
	"errors"
)

// Engine implements a Plan in the kernel of one network namespace.
//
// Install is all or nothing: when it fails, the rules are as they were before
// the call. Installing the same plan twice gives the same rules; installing a
// changed plan replaces shunt's rules atomically; rules shunt did not create
// are never touched. Uninstall removes exactly what Install added.
type Engine interface {
	// Name is "iptables", "nftables" or "ebpf".
	Name() string
	// Render returns what Install would apply, for --dry-run, keyed by a
	// label such as "ipv4" or "ipv6".
	Render(ctx context.Context, p *Plan) (map[string]string, error)
	Install(ctx context.Context, p *Plan) error
	Uninstall(ctx context.Context) error
	// Status reports what is installed and whether it drifted from what
	// Install applied.
	Status(ctx context.Context) (*Status, error)
}

// ErrNotInstalled is returned by Uninstall and Status when shunt has nothing
// installed in the namespace.
var ErrNotInstalled = errors.New("shunt capture is not installed")

// Status is an engine's view of the installed capture.
type Status struct {
	Engine    string `json:"engine"`
	Backend   string `json:"backend,omitempty"`
	Installed bool   `json:"installed"`
	Plan      *Plan  `json:"plan,omitempty"`
	// Drift lists the differences between the live rules and what was
	// applied; empty when they match.
	Drift []string `json:"drift,omitempty"`
	// Families or programs, with their rules and counters.
	Sections []Section `json:"sections,omitempty"`
	Notes    []string  `json:"notes,omitempty"`
}

// Section is one block of a status report: an iptables chain, a BPF map.
type Section struct {
	Name  string   `json:"name"`
	Lines []string `json:"lines"`
}

// UninstallRenderer is an engine that can print what Uninstall would
// remove (uninstall --dry-run).
type UninstallRenderer interface {
	RenderUninstall(ctx context.Context) (map[string]string, error)
}

// ListenerSyncer is an engine that must be told when the proxy's inbound
// listener appears (the eBPF engine steers inbound connections to the
// listener socket itself, which exists only once the proxy runs).
type ListenerSyncer interface {
	SyncListener(ctx context.Context) (int, error)
}

// ChoiceRecorder is an engine that writes, in its own record, why it was
// chosen (engine auto), so that status can say it.
type ChoiceRecorder interface {
	RecordChoice(reason string)
}

//go:build !initcontainer

package engines

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/ebpf"
)

// The eBPF engine, which the init container's build leaves out (see
// engines_initcontainer.go).

func ebpfProbe(cgroup string) error { return ebpf.Probe(cgroup) }

func ebpfSupported(p *redirect.Plan) error { return ebpf.Supported(p) }

func newEBPF(cfg *redirect.Config, log *slog.Logger) (redirect.Engine, error) {
	eng, err := ebpf.New(ebpf.Options{NetnsPath: cfg.Get("netns"), CgroupPath: cfg.Get("cgroup"), StateDir: cfg.Get("stateDir"), PinDir: cfg.Get("bpfPinDir"), Logger: log})
	if err != nil {
		return nil, err
	}
	return &ebpfRecorded{Engine: eng, cfg: cfg}, nil
}

// enrolledInNode returns the engine of a pod enrolled in the node's shared
// eBPF programs (DaemonSet use: shunt node loads them, the CNI plugin enrols
// each pod), so that status, explain and uninstall work for such pods too;
// nil when the cgroup is not enrolled.
func enrolledInNode(cfg *redirect.Config, log *slog.Logger) redirect.Engine {
	cg := cfg.Get("cgroup")
	if cg == "" {
		return nil
	}
	opts := ebpf.NodeOptions{PinDir: cfg.Get("bpfPinDir"), Logger: log}
	if cfg.IsSet("stateDir") {
		opts.StateDir = cfg.Get("stateDir")
	}
	node, err := ebpf.OpenNode(opts)
	if err != nil {
		return nil
	}
	if _, err := node.Status(context.Background(), cg); err != nil {
		node.Close()
		return nil
	}
	return node.Engine(cg, cfg.Get("netns"))
}

// ebpfRecorded is the per-workload eBPF engine with the common record kept
// beside its own, so that status, explain and uninstall find the engine,
// cgroup and pins without being told again.
type ebpfRecorded struct {
	*ebpf.Engine
	cfg *redirect.Config
}

// Install records the intent in the common record first, so that a
// process killed at any point leaves a record naming the engine, the
// cgroup and the pins (the engine's own record says what it got to).
func (e *ebpfRecorded) Install(ctx context.Context, p *redirect.Plan) error {
	dir := e.cfg.Get("stateDir")
	prev, err := redirect.LoadState(dir)
	if err != nil {
		return err
	}
	base := prev
	if base == nil || base.Engine != e.Name() {
		base = &redirect.State{Engine: e.Name(), Netns: e.cfg.Get("netns"), Cgroup: e.cfg.Get("cgroup"), PinDir: e.PinDir()}
	}
	if err := redirect.RecordIntent(dir, base, redirect.Intent{Engine: e.Name(), Plan: p.Clone()}); err != nil {
		return err
	}
	if err := e.Engine.Install(ctx, p); err != nil {
		// The engine undid its changes: so is the record.
		if cerr := redirect.ClearIntent(dir, prev); cerr != nil {
			return fmt.Errorf("%w; %v", err, cerr)
		}
		return err
	}
	return redirect.SaveState(dir, &redirect.State{
		Engine: e.Name(), Netns: e.cfg.Get("netns"), Cgroup: e.cfg.Get("cgroup"), PinDir: e.PinDir(),
		Plan: p.Clone(), InstalledAt: time.Now().UTC(),
	})
}

// Status reports an install whose common record holds an intent the
// engine's own record does not (killed before the engine began, or after
// it finished).
func (e *ebpfRecorded) Status(ctx context.Context) (*redirect.Status, error) {
	s, err := e.Engine.Status(ctx)
	st, lerr := redirect.LoadState(e.cfg.Get("stateDir"))
	if lerr != nil || st == nil || st.Intent == nil {
		return s, err
	}
	switch {
	case errors.Is(err, redirect.ErrNotInstalled):
		return &redirect.Status{Engine: e.Name(), Plan: st.Intent.Plan,
			Drift: []string{st.Intent.String(), "nothing of it is pinned in " + e.PinDir()}}, nil
	case err == nil && len(s.Drift) == 0:
		s.Notes = append(s.Notes, "the record in "+e.cfg.Get("stateDir")+" still holds an install that did not finish ("+st.Intent.String()+"), but everything it installs is in place")
	}
	return s, err
}

func (e *ebpfRecorded) Uninstall(ctx context.Context) error {
	err := e.Engine.Uninstall(ctx)
	if err != nil && !errors.Is(err, redirect.ErrNotInstalled) {
		return err
	}
	if rerr := redirect.RemoveState(e.cfg.Get("stateDir")); rerr != nil {
		return rerr
	}
	return err
}

func (e *ebpfRecorded) uninstallInner(ctx context.Context) error { return e.Engine.Uninstall(ctx) }

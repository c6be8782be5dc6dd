// Package engines chooses a capture engine from the configuration and finds
// the one holding a recorded installation. It is the one package that knows
// every engine: the engines depend on redirect's Plan, never on each other.
package engines

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/iptables"
	"github.com/shunt-dev/shunt/redirect/nftables"
	"github.com/shunt-dev/shunt/redirect/tproxyroute"
)

// Names are the engines a configuration may name, auto aside.
var Names = []string{"iptables", "nftables", "ebpf"}

// Choice is which engine was chosen and why.
type Choice struct {
	Engine string `json:"engine"`
	Reason string `json:"reason"`
}

// New returns the engine cfg asks for, wrapped so that it keeps the common
// record and takes the capture over from another engine (see Engine). With
// auto: eBPF where the kernel supports it and the cgroup is known, else
// iptables when its programs are installed, else nftables.
func New(cfg *redirect.Config, log *slog.Logger) (redirect.Engine, Choice, error) {
	if log == nil {
		log = slog.Default()
	}
	inner, ch, err := choose(cfg, log)
	if err != nil {
		return nil, ch, err
	}
	if r, ok := inner.(redirect.ChoiceRecorder); ok {
		r.RecordChoice(ch.Reason)
	}
	return &Engine{Engine: inner, cfg: cfg, choice: ch, log: log}, ch, nil
}

func choose(cfg *redirect.Config, log *slog.Logger) (redirect.Engine, Choice, error) {
	switch e := cfg.Get("engine"); e {
	case "iptables":
		return newIptables(cfg, log), Choice{"iptables", "chosen with engine"}, nil
	case "nftables":
		return newNftables(cfg, log), Choice{"nftables", "chosen with engine"}, nil
	case "ebpf":
		if eng := enrolledInNode(cfg, log); eng != nil {
			return eng, Choice{"ebpf", "the cgroup is enrolled in the node's programs"}, nil
		}
		if cfg.Get("cgroup") == "" {
			return nil, Choice{}, errors.New("cgroup: required with engine ebpf: the cgroup-v2 directory of the workload")
		}
		if err := ebpfProbe(cfg.Get("cgroup")); err != nil {
			return nil, Choice{}, fmt.Errorf("engine ebpf: %w", err)
		}
		eng, err := newEBPF(cfg, log)
		return eng, Choice{"ebpf", "chosen with engine"}, err
	case "auto":
		var why string
		switch {
		case cfg.Get("cgroup") == "":
			why = "no cgroup given for eBPF"
		case cfg.Get("excludeInterfaces") != "":
			why = "excludeInterfaces needs a netfilter engine"
		case ebpfRefuses(cfg) != nil:
			why = ebpfRefuses(cfg).Error()
		default:
			if err := ebpfProbe(cfg.Get("cgroup")); err != nil {
				why = err.Error()
			} else {
				eng, err := newEBPF(cfg, log)
				ch := Choice{"ebpf", "auto: the kernel supports eBPF and the cgroup is " + cfg.Get("cgroup")}
				log.Info("engine auto: chose ebpf", "reason", ch.Reason)
				return eng, ch, err
			}
		}
		if prog, ok := iptablesPrograms(); ok {
			ch := Choice{"iptables", fmt.Sprintf("auto: not eBPF (%s); %s is installed", why, prog)}
			log.Info("engine auto: chose iptables", "reason", ch.Reason)
			return newIptables(cfg, log), ch, nil
		}
		ch := Choice{"nftables", fmt.Sprintf("auto: not eBPF (%s); no iptables programs in PATH", why)}
		log.Info("engine auto: chose nftables", "reason", ch.Reason)
		return newNftables(cfg, log), ch, nil
	default:
		return nil, Choice{}, fmt.Errorf("engine: invalid value %q: want iptables, nftables, ebpf or auto", e)
	}
}

// ebpfRefuses reports the first plan feature the eBPF engine does not
// implement (tproxy inbound, include-only lists, vnet interfaces...).
// Callers validated the configuration already; an invalid one refuses
// nothing here.
func ebpfRefuses(cfg *redirect.Config) error {
	p, err := cfg.Plan(redirect.OSHost{})
	if err != nil {
		return nil
	}
	return ebpfSupported(p)
}

// iptablesPrograms reports whether an iptables-restore of either variant
// is in PATH.
func iptablesPrograms() (string, bool) {
	for _, p := range []string{"iptables-nft-restore", "iptables-legacy-restore", "iptables-restore"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, true
		}
	}
	return "", false
}

func newIptables(cfg *redirect.Config, log *slog.Logger) redirect.Engine {
	// Both were validated with the plan; a bad value here falls back to
	// the default.
	wait, _ := cfg.XtablesLockWait()
	retries, _ := cfg.XtablesRetries()
	if retries == 0 {
		retries = -1 // none
	}
	return iptables.New(iptables.Options{
		NetnsPath: cfg.Get("netns"),
		StateDir:  cfg.Get("stateDir"),
		Backend:   cfg.Get("iptablesBackend"),
		LockWait:  wait,
		Retries:   retries,
		Logger:    log,
	})
}

func newNftables(cfg *redirect.Config, log *slog.Logger) redirect.Engine {
	return nftables.New(nftables.Options{NetnsPath: cfg.Get("netns"), StateDir: cfg.Get("stateDir"), Logger: log})
}

// Recorded returns the engine holding the capture recorded in the state
// directory (the configured one when nothing is recorded) and the record:
// status, explain and uninstall act on what was installed.
func Recorded(cfg *redirect.Config, log *slog.Logger) (redirect.Engine, *redirect.State, error) {
	st, err := redirect.LoadState(cfg.Get("stateDir"))
	if err != nil {
		return nil, nil, err
	}
	Adopt(cfg, st)
	eng, _, err := New(cfg, log)
	return eng, st, err
}

// Adopt takes the engine and its location from a record.
func Adopt(cfg *redirect.Config, st *redirect.State) {
	if st == nil {
		return
	}
	if st.Engine != "" {
		_ = cfg.Set("engine", st.Engine, "state")
	}
	if st.Cgroup != "" && !cfg.IsSet("cgroup") {
		_ = cfg.Set("cgroup", st.Cgroup, "state")
	}
	if st.PinDir != "" && !cfg.IsSet("bpfPinDir") {
		_ = cfg.Set("bpfPinDir", st.PinDir, "state")
	}
}

// Engine is a chosen engine. Its Install takes the capture over from the
// engine recorded before when that is another one: the new engine's rules
// are installed first, then the old engine's removed, so the workload is
// never left uncaptured; and it records why the engine was chosen.
type Engine struct {
	redirect.Engine
	cfg    *redirect.Config
	choice Choice
	log    *slog.Logger
	// mu guards own: the record file as this engine last wrote it, so
	// that a long-lived engine's next install skips reading it.
	mu  sync.Mutex
	own *fileID
}

type fileID struct {
	size int64
	mod  time.Time
}

func statRecord(dir string) *fileID {
	fi, err := os.Stat(filepath.Join(dir, "capture.json"))
	if err != nil {
		return nil
	}
	return &fileID{size: fi.Size(), mod: fi.ModTime()}
}

// Inner is the engine itself, for its optional features.
func (e *Engine) Inner() redirect.Engine { return e.Engine }

// Choice is which engine was chosen and why.
func (e *Engine) Choice() Choice { return e.choice }

// RenderUninstall implements redirect.UninstallRenderer when the engine does.
func (e *Engine) RenderUninstall(ctx context.Context) (map[string]string, error) {
	r, ok := e.Engine.(redirect.UninstallRenderer)
	if !ok {
		return nil, fmt.Errorf("uninstall --dry-run is not supported by the %s engine", e.Name())
	}
	return r.RenderUninstall(ctx)
}

// Install implements redirect.Engine.
func (e *Engine) Install(ctx context.Context, p *redirect.Plan) error {
	dir := e.cfg.Get("stateDir")
	e.mu.Lock()
	own := e.own
	e.mu.Unlock()
	if cur := statRecord(dir); own != nil && cur != nil && *cur == *own {
		// The record is this engine's own, as it left it.
		if err := e.Engine.Install(ctx, p); err != nil {
			return err
		}
		return e.noteChoice(dir)
	}
	prev, err := redirect.LoadState(dir)
	if err != nil {
		return err
	}
	if prev == nil || prev.Engine == "" || prev.Engine == e.Name() {
		if err := e.Engine.Install(ctx, p); err != nil {
			return err
		}
		return e.noteChoice(dir)
	}
	return e.migrate(ctx, prev, p)
}

// migrate installs with this engine over another engine's capture. The
// old record is moved aside while the new engine installs (an engine
// refuses a namespace another engine holds), put back if that fails, and
// then used to remove the old engine's rules.
func (e *Engine) migrate(ctx context.Context, prev *redirect.State, p *redirect.Plan) error {
	dir := e.cfg.Get("stateDir")
	aside, err := os.MkdirTemp(dir, ".migrate-")
	if err != nil {
		return fmt.Errorf("install: migrate from %s: %w", prev.Engine, err)
	}
	defer os.RemoveAll(aside)
	oldCfg := clone(e.cfg)
	Adopt(oldCfg, prev)
	old, _, err := choose(oldCfg, e.log)
	if err != nil {
		return fmt.Errorf("install: the %s engine holding the capture: %w", prev.Engine, err)
	}
	if err := redirect.SaveState(aside, prev); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, "capture.json")); err != nil {
		return fmt.Errorf("install: migrate from %s: %w", prev.Engine, err)
	}
	if err := e.Engine.Install(ctx, p); err != nil {
		if rerr := redirect.SaveState(dir, prev); rerr != nil {
			return fmt.Errorf("%w; restoring the %s record also failed: %v", err, prev.Engine, rerr)
		}
		return err
	}
	// The old engine acts on its record, moved aside (eBPF keeps its own
	// record beside the common one, so it works from the real directory).
	switch o := old.(type) {
	case ownRecordKeeper:
		err = o.uninstallInner(ctx)
	default:
		oldCfg2 := clone(oldCfg)
		_ = oldCfg2.Set("stateDir", aside, "migration")
		old, _, cerr := choose(oldCfg2, e.log)
		if cerr != nil {
			err = cerr
		} else {
			err = old.Uninstall(ctx)
		}
	}
	if err != nil && !errors.Is(err, redirect.ErrNotInstalled) {
		return fmt.Errorf("install: %s capture installed, but removing the %s engine's rules failed: %w", e.Name(), prev.Engine, err)
	}
	if err := e.keepTProxyRoutes(prev, p); err != nil {
		return fmt.Errorf("install: %s capture installed, but %w", e.Name(), err)
	}
	e.log.Info("capture migrated", "from", prev.Engine, "to", e.Name())
	return e.noteChoice(dir)
}

// keepTProxyRoutes puts back the TPROXY policy route both netfilter
// engines use when the old engine's uninstall removed the one the new
// capture shares with it (for the moment between the two, marked packets
// find no local route).
func (e *Engine) keepTProxyRoutes(prev *redirect.State, p *redirect.Plan) error {
	if p.InboundTProxy == nil || prev.Plan == nil || prev.Plan.InboundTProxy == nil {
		return nil
	}
	st, err := redirect.LoadState(e.cfg.Get("stateDir"))
	if err != nil || st == nil {
		return err
	}
	if _, err := tproxyroute.Ensure(e.cfg.Get("netns"), p.InboundTProxy, st.Families, e.log); err != nil {
		return fmt.Errorf("restoring the TPROXY routes failed: %w", err)
	}
	return nil
}

// noteChoice adds why the engine was chosen to the record, for status,
// unless the engine records it itself, and remembers the record as its own.
func (e *Engine) noteChoice(dir string) error {
	if _, ok := e.Engine.(redirect.ChoiceRecorder); !ok {
		st, err := redirect.LoadState(dir)
		if err != nil {
			return err
		}
		if st != nil && st.Chosen != e.choice.Reason {
			st.Chosen = e.choice.Reason
			if err := redirect.SaveState(dir, st); err != nil {
				return err
			}
		}
	}
	id := statRecord(dir)
	e.mu.Lock()
	e.own = id
	e.mu.Unlock()
	return nil
}

// Status implements redirect.Engine, adding how the engine was chosen.
func (e *Engine) Status(ctx context.Context) (*redirect.Status, error) {
	s, err := e.Engine.Status(ctx)
	if err != nil || s == nil {
		return s, err
	}
	if _, ok := e.Engine.(redirect.ChoiceRecorder); ok {
		return s, nil // the engine says it itself
	}
	if st, _ := redirect.LoadState(e.cfg.Get("stateDir")); st != nil && st.Chosen != "" {
		s.Notes = append([]string{"engine " + st.Engine + ": " + st.Chosen}, s.Notes...)
	}
	return s, nil
}

// ownRecordKeeper is an engine that keeps its own record beside the common
// one (eBPF): a migration away from it removes its capture with the inner
// engine, which works from its own record in the real directory.
type ownRecordKeeper interface {
	uninstallInner(ctx context.Context) error
}

// clone copies a configuration, so a second engine can be built from it.
func clone(c *redirect.Config) *redirect.Config {
	out := redirect.NewConfig()
	for k, v := range c.Values() {
		if c.IsSet(k) {
			_ = out.Set(k, v, "copy")
		}
	}
	return out
}

// SyncListener implements redirect.ListenerSyncer for the engines that
// need it (eBPF) and does nothing for the others.
func (e *Engine) SyncListener(ctx context.Context) (int, error) {
	if s, ok := e.Engine.(redirect.ListenerSyncer); ok {
		return s.SyncListener(ctx)
	}
	return 0, nil
}

// Package iptables implements shunt's capture with iptables: one
// iptables-restore --noflush batch per family, in chains shunt owns, with
// jumps from the built-in chains marked by a comment.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/shunt-dev/shunt/redirect"
)

// Options configure an Engine.
type Options struct {
	// NetnsPath is the network namespace to act on ("" = the current one).
	NetnsPath string
	// StateDir is where the installation is recorded.
	StateDir string
	// LockDir holds earlier builds' per-namespace lock files (default
	// /run/shunt/locks), honoured where they exist.
	LockDir string
	// Backend is "auto", "legacy" or "nft".
	Backend string
	// LockWait bounds the wait for the xtables lock.
	LockWait time.Duration
	// Retries bounds how often a transient failure (the xtables lock still
	// held after LockWait, a concurrent writer) is retried: 0 means the
	// default, negative means never.
	Retries int
	Logger  *slog.Logger
	// CommandsFor overrides the programs used (tests inject failures).
	CommandsFor func(b Backend, v6 bool) Commands
}

// Engine is the iptables capture engine.
type Engine struct {
	opts Options
	log  *slog.Logger
	run  runner
}

// New returns an engine; nothing is touched until Install.
func New(opts Options) *Engine {
	if opts.StateDir == "" {
		opts.StateDir = redirect.DefaultStateDir
	}
	if opts.LockDir == "" {
		opts.LockDir = redirect.DefaultLockDir
	}
	if opts.Backend == "" {
		opts.Backend = "auto"
	}
	if opts.LockWait == 0 {
		opts.LockWait = 10 * time.Second
	}
	switch {
	case opts.Retries == 0:
		opts.Retries = redirect.DefaultXtablesRetries
	case opts.Retries < 0:
		opts.Retries = 0
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Engine{opts: opts, log: opts.Logger, run: runner{lockWait: opts.LockWait}}
}

// Name implements redirect.Engine.
func (e *Engine) Name() string { return "iptables" }

func (e *Engine) commands(b Backend, f family) Commands {
	if e.opts.CommandsFor != nil {
		return e.opts.CommandsFor(b, f.v6())
	}
	return defaultCommands(b, f)
}

// inNetns runs f on a thread in the target namespace; the iptables programs
// it starts inherit that namespace.
func (e *Engine) inNetns(f func() error) error {
	if e.opts.NetnsPath == "" {
		return f()
	}
	err := ns.WithNetNSPath(e.opts.NetnsPath, func(ns.NetNS) error { return f() })
	var nsErr ns.NSPathNotExistErr
	if errors.As(err, &nsErr) {
		return fmt.Errorf("netns %s: %w", e.opts.NetnsPath, err)
	}
	return err
}

// Render implements redirect.Engine: the iptables-restore input of each
// family, as an install into a namespace without shunt rules would apply it.
func (e *Engine) Render(_ context.Context, p *redirect.Plan) (map[string]string, error) {
	if err := p.Egress.Validate(); err != nil {
		return nil, err
	}
	out := map[string]string{"ipv4": RestoreInput(newRuleset(), Render(p, false))}
	if p.IPFamily == redirect.FamilyDual {
		out["ipv6"] = RestoreInput(newRuleset(), Render(p, true))
	}
	return out, nil
}

// familyInfo is what install learned about one family.
type familyInfo struct {
	f       family
	cmds    Commands
	before  *Dump // as found, for rollback
	applied string
}

// lock serialises changes to the namespace and to the state directory.
func (e *Engine) lock(ctx context.Context) (func(), error) {
	unlockNS, err := redirect.LockNetns(ctx, e.opts.LockDir, e.opts.NetnsPath)
	if err != nil {
		return nil, err
	}
	unlockState, err := redirect.LockState(ctx, e.opts.StateDir)
	if err != nil {
		unlockNS()
		return nil, err
	}
	return func() { unlockState(); unlockNS() }, nil
}

// begin locks the namespace and returns the recorded installation, refusing
// one made by another engine.
func (e *Engine) begin(ctx context.Context, op string) (unlock func(), prev *redirect.State, err error) {
	unlock, err = e.lock(ctx)
	if err != nil {
		return nil, nil, err
	}
	prev, err = redirect.LoadState(e.opts.StateDir)
	if err == nil && prev != nil && prev.Engine != e.Name() {
		err = fmt.Errorf("%s: the capture here is held by the %s engine; use it, or uninstall it first", op, prev.Engine)
	}
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return unlock, prev, nil
}

// variant is one backend and family whose programs exist on this machine.
type variant struct {
	b    Backend
	f    family
	cmds Commands
}

func (v variant) String() string { return fmt.Sprintf("%s %s", v.b, v.f) }

func (e *Engine) variants() []variant {
	var out []variant
	for _, b := range []Backend{Legacy, NFT} {
		for _, f := range []family{ipv4, ipv6} {
			if cmds := e.commands(b, f); available(cmds) {
				out = append(out, variant{b: b, f: f, cmds: cmds})
			}
		}
	}
	return out
}

// dumpAll reads the rules of every variant, in parallel; a variant whose
// rules cannot be read has a nil dump and an error.
func (e *Engine) dumpAll(ctx context.Context, vs []variant) ([]*Dump, []error) {
	dumps := make([]*Dump, len(vs))
	errs := e.parallel(len(vs), func(i int) error {
		d, err := e.dump(ctx, vs[i].cmds)
		dumps[i] = d
		return err
	})
	return dumps, errs
}

// Install implements redirect.Engine.
func (e *Engine) Install(ctx context.Context, p *redirect.Plan) error {
	if err := p.Egress.Validate(); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	unlock, prev, err := e.begin(ctx, "install")
	if err != nil {
		return err
	}
	defer unlock()
	st, err := e.install(ctx, p, prev)
	if err != nil {
		return err
	}
	st.Netns = e.opts.NetnsPath
	if err := redirect.SaveState(e.opts.StateDir, st); err != nil {
		return fmt.Errorf("install: rules are in place but %w", err)
	}
	return nil
}

// install applies the plan family by family. The families are independent
// (separate tables), so their batches run in parallel: the kernel's commit
// of an nftables transaction is the slow part of an install.
func (e *Engine) install(ctx context.Context, p *redirect.Plan, prev *redirect.State) (*redirect.State, error) {
	// Dumps read while choosing the backend are reused: each exec of an
	// iptables program costs milliseconds.
	seen := map[Commands]*Dump{}
	backend, why, err := e.chooseBackend(ctx, prev, seen)
	if err != nil {
		return nil, err
	}
	e.log.Debug("iptables backend chosen", "backend", backend, "reason", why)

	st := &redirect.State{Engine: e.Name(), Backend: string(backend), Plan: p.Clone(), Applied: map[string]string{}, InstalledAt: time.Now().UTC()}
	want := map[family]bool{ipv4: true}
	if p.IPFamily == redirect.FamilyDual {
		var reason string
		if err := e.inNetns(func() error { reason = e.ipv6Unavailable(backend); return nil }); err != nil {
			return nil, err
		}
		if reason != "" {
			e.log.Info("IPv6 capture skipped", "reason", reason)
			st.Skipped = append(st.Skipped, "ipv6: "+reason)
		} else {
			want[ipv6] = true
		}
	}
	// A family installed before (or touched by an interrupted install)
	// but not wanted now is emptied.
	todo := []family{ipv4}
	if want[ipv6] || (prev != nil && (contains(prev.Families, string(ipv6)) || (prev.Intent != nil && contains(prev.Intent.Families, string(ipv6))))) {
		todo = append(todo, ipv6)
	}
	// The intent is on disk before the first rule changes: killed at any
	// point from here on, the install leaves a record that says so.
	intent := redirect.Intent{Engine: e.Name(), Backend: string(backend), Plan: p.Clone()}
	for _, f := range todo {
		intent.Families = append(intent.Families, string(f))
	}
	if err := redirect.RecordIntent(e.opts.StateDir, prev, intent); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}

	// The policy route goes in first: TPROXY rules without it would send
	// captured packets nowhere.
	var tpFams []family
	for _, f := range []family{ipv4, ipv6} {
		if want[f] {
			tpFams = append(tpFams, f)
		}
	}
	undoRoutes := func() {}
	if p.InboundTProxy != nil {
		undo, err := e.ensureTProxyRoutes(p.InboundTProxy, tpFams)
		if err != nil {
			return nil, fmt.Errorf("install TPROXY routes: %w", err)
		}
		undoRoutes = undo
	}

	infos := make([]*familyInfo, len(todo))
	for i, f := range todo {
		infos[i] = &familyInfo{f: f, cmds: e.commands(backend, f), before: seen[e.commands(backend, f)]}
	}
	errs := e.parallel(len(infos), func(i int) error {
		fi := infos[i]
		if fi.before == nil {
			d, err := e.dump(ctx, fi.cmds)
			if err != nil {
				return err
			}
			fi.before = d
		}
		desired := newRuleset()
		if want[fi.f] {
			desired = Render(p, fi.f.v6())
		}
		fi.applied = desired.String()
		return e.applyFamily(ctx, fi.cmds, desired, fi.before)
	})
	var failed error
	for i, err := range errs {
		if err != nil {
			failed = errors.Join(failed, fmt.Errorf("install %s rules: %w", infos[i].f, err))
		}
	}
	if failed != nil {
		// Every family goes back to what it was, the failed one too: a
		// backend that commits table by table may have applied part of it.
		rerrs := e.parallel(len(infos), func(i int) error {
			if infos[i].before == nil {
				return nil
			}
			return e.applyFamily(ctx, infos[i].cmds, infos[i].before.Shunt, nil)
		})
		rolledBack := true
		for i, rerr := range rerrs {
			if rerr != nil {
				rolledBack = false
				failed = fmt.Errorf("%w; rolling back %s also failed: %v", failed, infos[i].f, rerr)
			}
		}
		undoRoutes()
		if rolledBack {
			// The rules are as found: so is the record. Otherwise the
			// intent stays, telling status and uninstall the truth.
			if err := redirect.ClearIntent(e.opts.StateDir, prev); err != nil {
				failed = fmt.Errorf("%w; %v", failed, err)
			}
		}
		return nil, failed
	}
	for _, fi := range infos {
		if want[fi.f] {
			// Rules are rendered exactly as iptables-save prints them
			// (the tests hold both backends to that), so what was
			// applied needs no read-back to serve as the reference.
			st.Families = append(st.Families, string(fi.f))
			st.Applied[string(fi.f)] = fi.applied
		}
	}
	if prev != nil && prev.Plan != nil && prev.Plan.InboundTProxy != nil {
		// The rules no longer use what the previous plan routed.
		if err := e.removeTProxyRoutes(prev.Plan.InboundTProxy, p.InboundTProxy, tpFams); err != nil {
			e.log.Warn("could not remove the previous TPROXY routes", "err", err)
		}
	}
	var stale []string
	if prev != nil && prev.Backend != "" && prev.Backend != string(backend) {
		stale = append(stale, prev.Backend)
	}
	if prev != nil && prev.Intent != nil && prev.Intent.Backend != "" && prev.Intent.Backend != string(backend) && !contains(stale, prev.Intent.Backend) {
		stale = append(stale, prev.Intent.Backend)
	}
	for _, old := range stale {
		// The backend changed (forced by --iptables-backend): the old
		// variant's rules would otherwise keep capturing too.
		fams := []family{ipv4, ipv6}
		e.parallel(len(fams), func(i int) error {
			cmds := e.commands(Backend(old), fams[i])
			if !available(cmds) {
				return nil
			}
			if err := e.applyFamily(ctx, cmds, newRuleset(), nil); err != nil {
				e.log.Warn("could not remove rules of the previous backend", "backend", old, "family", fams[i], "err", err)
			}
			return nil
		})
	}
	return st, nil
}

// parallel runs fn(0..n-1) concurrently, each on its own thread in the
// target namespace, and returns their errors by index.
func (e *Engine) parallel(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = e.inNetns(func() error { return fn(i) })
		}(i)
	}
	wg.Wait()
	return errs
}

// applyFamily makes shunt's rules of one family equal desired, retrying
// when the xtables lock is busy or another writer raced us.
// cur, when given, is a fresh dump that saves reading the rules again on the
// first attempt.
func (e *Engine) applyFamily(ctx context.Context, cmds Commands, desired *Ruleset, cur *Dump) error {
	var last error
	for attempt := 0; attempt <= e.opts.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt*attempt) * 20 * time.Millisecond):
			}
		}
		if cur == nil || attempt > 0 {
			var err error
			if cur, err = e.dump(ctx, cmds); err != nil {
				return err
			}
		}
		input := RestoreInput(cur.Shunt, desired)
		if input == "" {
			return nil
		}
		err := e.run.restore(ctx, cmds, input)
		if err == nil {
			return nil
		}
		last = err
		var ce *CommandError
		if !errors.As(err, &ce) || !ce.transient() {
			return fmt.Errorf("apply rules with %s: %w", cmds.Restore, err)
		}
		e.log.Debug("transient iptables-restore failure, retrying", "attempt", attempt+1, "err", err)
	}
	return fmt.Errorf("apply rules with %s after %d attempts: %w", cmds.Restore, e.opts.Retries+1, last)
}

func (e *Engine) dump(ctx context.Context, cmds Commands) (*Dump, error) {
	out, err := e.run.save(ctx, cmds)
	if err != nil {
		return nil, fmt.Errorf("read rules with %s: %w", cmds.Save, err)
	}
	return ParseSave(out)
}

// chooseBackend follows the rule: an explicit choice wins; then the backend
// of the previous install; then the variant that already holds rules in
// this namespace; otherwise nft.
func (e *Engine) chooseBackend(ctx context.Context, prev *redirect.State, seen map[Commands]*Dump) (Backend, string, error) {
	switch e.opts.Backend {
	case "legacy", "nft":
		b := Backend(e.opts.Backend)
		if !available(e.commands(b, ipv4)) {
			return "", "", fmt.Errorf("iptablesBackend %s: %s not found", b, e.commands(b, ipv4).Restore)
		}
		return b, "chosen with iptablesBackend", nil
	case "auto":
	default:
		return "", "", fmt.Errorf("iptablesBackend: invalid value %q: want auto, legacy or nft", e.opts.Backend)
	}
	if prev != nil && prev.Backend != "" && available(e.commands(Backend(prev.Backend), ipv4)) {
		return Backend(prev.Backend), "used by the previous install", nil
	}
	// Only the variants the kernel says have tables here are read (one
	// parallel pass); the others hold no rules.
	vs := e.variants()
	todo := e.emptyDumps(vs, seen)
	dumps := make([]*Dump, len(todo))
	e.parallel(len(todo), func(i int) error {
		d, err := e.dump(ctx, todo[i].cmds)
		if err != nil {
			e.log.Debug("iptables variant unusable", "variant", todo[i], "err", err)
			return nil
		}
		dumps[i] = d
		return nil
	})
	for i, d := range dumps {
		if d != nil {
			seen[todo[i].cmds] = d
		}
	}
	rules := map[Backend]int{}
	for _, v := range vs {
		d := seen[v.cmds]
		if d == nil {
			continue
		}
		rules[v.b] += d.ForeignLen
		if !d.Shunt.Empty() {
			rules[v.b]++
		}
	}
	switch {
	case rules[Legacy] > 0 && rules[NFT] == 0:
		return Legacy, "legacy holds rules in this namespace", nil
	case rules[NFT] > 0 && rules[Legacy] == 0:
		return NFT, "nft holds rules in this namespace", nil
	case rules[Legacy] > rules[NFT]:
		return Legacy, "legacy holds more rules in this namespace", nil
	}
	if available(e.commands(NFT, ipv4)) {
		return NFT, "default", nil
	}
	if available(e.commands(Legacy, ipv4)) {
		return Legacy, "nft variant not installed", nil
	}
	return "", "", errors.New("no iptables programs found (install the iptables package)")
}

// ipv6Unavailable returns why IPv6 cannot be captured here, or "".
func (e *Engine) ipv6Unavailable(b Backend) string {
	data, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	if err != nil {
		return "the kernel has no IPv6 in this namespace"
	}
	if strings.TrimSpace(string(data)) == "1" {
		return "IPv6 is disabled in this namespace (net.ipv6.conf.all.disable_ipv6=1)"
	}
	if c := e.commands(b, ipv6); !available(c) {
		return c.Restore + " not found"
	}
	return ""
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

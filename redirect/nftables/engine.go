// Package nftables implements shunt's capture natively in nftables: one
// table of its own (inet shunt) written over netlink in one transaction,
// with interval sets for address and port lists. No program is executed.
package nftables

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/tproxyroute"
)

// Name is the engine's name in configuration and records.
const Name = "nftables"

// Options configure an Engine.
type Options struct {
	// NetnsPath is the network namespace to act on ("" = the current one).
	NetnsPath string
	// StateDir is where the installation is recorded.
	StateDir string
	// LockDir holds earlier builds' per-namespace lock files (default
	// /run/shunt/locks), honoured where they exist.
	LockDir string
	Logger  *slog.Logger
}

// Engine is the nftables capture engine.
type Engine struct {
	opts Options
	log  *slog.Logger
	// last is what this engine knows from its own last change, so that a
	// long-lived engine (the agent's) changing a set neither re-reads the
	// record nor the table while neither changed.
	mu   sync.Mutex
	last *known
	// socks are the netlink sockets Install keeps between changes.
	socks socks
	// chosen is why the engine was chosen, kept in the record.
	chosen string
	// corrupt, set by tests, spoils a batch before it is sent, so that
	// the kernel refuses it.
	corrupt func(*Ruleset)
	// afterCheck, set by tests, runs between the check that the table is
	// absent and the batch that creates it.
	afterCheck func()
}

// New returns an engine; nothing is touched until Install.
func New(opts Options) *Engine {
	if opts.StateDir == "" {
		opts.StateDir = redirect.DefaultStateDir
	}
	if opts.LockDir == "" {
		opts.LockDir = redirect.DefaultLockDir
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Engine{opts: opts, log: opts.Logger}
}

// Name implements redirect.Engine.
func (e *Engine) Name() string { return Name }

// RecordChoice implements redirect.ChoiceRecorder.
func (e *Engine) RecordChoice(reason string) { e.chosen = reason }

// supportedPlanKeys are the plan fields this engine implements. A field
// added to the plan later is refused, naming its key, until the engine
// implements it: a plan is never installed only in part.
var supportedPlanKeys = []string{
	"proxyUID", "proxyGID", "bypassMark", "inboundPort", "captureInbound", "outboundPort",
	"dnsPort", "adminPort", "dnsMode", "dnsServers", "resolvConf",
	"excludeInboundPorts", "excludeOutboundPorts", "excludeInboundCidrs", "excludeOutboundCidrs",
	"excludeOutboundPortsForUids", "excludeInterfaces", "ipFamily", "meshCidrs", "egress",
	"inboundTproxy", "dropInvalid", "includeOutboundCidrs", "includeOutboundPorts", "includeInboundPorts", "vnets", "packetLog",
}

// implementedFeatures are the optional features (by configuration key,
// redirect.Plan.Features) this engine implements; one added to the plan
// later is refused by its key until it is implemented here.
var implementedFeatures = []string{
	"excludeInterfaces", "inboundMode", "dropInvalid", "includeOutboundCidrs", "includeOutboundPorts",
	"includeInboundPorts", "vnetInterfaces", "packetLog",
}

// Check reports a plan this engine cannot implement, naming the
// configuration key of what it refuses. It is the one place that decides.
func Check(p *redirect.Plan) error {
	if err := p.Egress.Validate(); err != nil {
		return err
	}
	for _, f := range p.Features() {
		if !slices.Contains(implementedFeatures, f.Key) {
			return fmt.Errorf("%s: invalid value %q: not implemented by the nftables engine; use engine iptables", f.Key, f.Value)
		}
	}
	// A field this engine does not know is set: found by reflection, not
	// by encoding the plan (its lists may hold thousands of prefixes).
	var unsupported []string
	v := reflect.ValueOf(p).Elem()
	for i := 0; i < v.NumField(); i++ {
		k, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		if slices.Contains(supportedPlanKeys, k) || v.Field(i).IsZero() {
			continue
		}
		unsupported = append(unsupported, k)
	}
	if len(unsupported) > 0 {
		slices.Sort(unsupported)
		return fmt.Errorf("%s: not implemented by the nftables engine (use engine iptables)", strings.Join(unsupported, ", "))
	}
	for _, ifc := range p.ExcludeInterfaces {
		if !validIfname(ifc) {
			return fmt.Errorf("excludeInterfaces: invalid value %q: only a trailing + wildcard is supported", ifc)
		}
	}
	for _, v := range p.VNets {
		if !validIfname(v.Interface) {
			return fmt.Errorf("vnetInterfaces: invalid value %q: only a trailing + wildcard is supported", v.String())
		}
	}
	return nil
}

// validIfname reports whether an interface name can be written as nft's
// quoted name: no quote, backslash or "*", and "+" only at the end.
func validIfname(ifc string) bool {
	return !strings.ContainsRune(strings.TrimSuffix(ifc, "+"), '+') && !strings.ContainsAny(ifc, `"*\`)
}

// Render implements redirect.Engine: the nft -f input of the one batch an
// install sends, keyed "inet".
func (e *Engine) Render(_ context.Context, p *redirect.Plan) (map[string]string, error) {
	if err := Check(p); err != nil {
		return nil, err
	}
	rs := Render(p)
	// The batch install would send: a namespace without the table gets it
	// created, one with it gets it deleted and written again.
	if c, closeConn, err := dial(e.opts.NetnsPath); err == nil {
		absent, aerr := tableAbsent(c)
		closeConn()
		if aerr == nil && absent {
			return map[string]string{"inet": rs.Body()}, nil
		}
	}
	return map[string]string{"inet": rs.String()}, nil
}

// RenderUninstall implements redirect.UninstallRenderer.
func (e *Engine) RenderUninstall(ctx context.Context) (map[string]string, error) {
	c, done, err := dial(e.opts.NetnsPath)
	if err != nil {
		return nil, err
	}
	defer done()
	if absent, err := tableAbsent(c); err != nil {
		return nil, err
	} else if absent {
		return map[string]string{}, nil
	}
	return map[string]string{"inet": fmt.Sprintf("delete table inet %s\n", TableName)}, nil
}

// begin locks the namespace and the state directory and returns the
// recorded installation, refusing one made by another engine.
func (e *Engine) begin(ctx context.Context, op string) (func(), *redirect.State, error) {
	unlockNS, err := redirect.LockNetns(ctx, e.opts.LockDir, e.opts.NetnsPath)
	if err != nil {
		return nil, nil, err
	}
	unlockState, err := redirect.LockState(ctx, e.opts.StateDir)
	if err != nil {
		unlockNS()
		return nil, nil, err
	}
	unlock := func() { unlockState(); unlockNS() }
	prev, err := redirect.LoadState(e.opts.StateDir)
	if err == nil && prev != nil && prev.Engine != Name {
		err = fmt.Errorf("%s: the capture here is held by the %s engine; use it, or uninstall it first", op, prev.Engine)
	}
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return unlock, prev, nil
}

// known is an installation as this engine last recorded it.
type known struct {
	// size and mod identify the record file as written.
	size int64
	mod  time.Time
	st   *redirect.State
	rs   *Ruleset
	// gen is the nftables generation the record describes; 0 unknown.
	gen uint32
}

func (e *Engine) recordPath() string { return filepath.Join(e.opts.StateDir, "capture.json") }

// cached returns what the engine knows when the record file is still the
// one it wrote.
func (e *Engine) cached() *known {
	e.mu.Lock()
	k := e.last
	e.mu.Unlock()
	if k == nil {
		return nil
	}
	fi, err := os.Stat(e.recordPath())
	if err != nil || fi.Size() != k.size || !fi.ModTime().Equal(k.mod) {
		return nil
	}
	return k
}

func (e *Engine) remember(k *known) {
	if k != nil {
		if fi, err := os.Stat(e.recordPath()); err == nil {
			k.size, k.mod = fi.Size(), fi.ModTime()
		} else {
			k = nil
		}
	}
	e.mu.Lock()
	e.last = k
	e.mu.Unlock()
}

// Install implements redirect.Engine. The change is one netlink batch: the
// whole table replaced, or, when only set contents changed and the live
// table is as recorded, just the elements added and removed.
func (e *Engine) Install(ctx context.Context, p *redirect.Plan) error {
	if err := Check(p); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	unlockNS, err := redirect.LockNetns(ctx, e.opts.LockDir, e.opts.NetnsPath)
	if err != nil {
		return err
	}
	defer unlockNS()
	unlockState, err := redirect.LockState(ctx, e.opts.StateDir)
	if err != nil {
		return err
	}
	defer unlockState()
	k := e.cached()
	var prev *redirect.State
	if k != nil {
		prev = k.st
	} else if prev, err = redirect.LoadState(e.opts.StateDir); err != nil {
		return err
	}
	if prev != nil && prev.Engine != Name {
		return fmt.Errorf("install: the capture here is held by the %s engine; use it, or uninstall it first", prev.Engine)
	}
	c, gc, keep, err := e.socks.get(e.opts.NetnsPath)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	// The sockets outlive a change that succeeded; after any failure
	// they are dropped, with whatever they may still have queued.
	ok := false
	defer func() { keep(ok) }()

	// The policy route goes in first: TPROXY rules without it would send
	// captured packets nowhere. A batch the kernel refuses takes back
	// what this install added.
	flushed := false
	if t := p.InboundTProxy; t != nil {
		undo, err := tproxyroute.Ensure(e.opts.NetnsPath, t, familyLabels(p), e.log)
		if err != nil {
			return fmt.Errorf("install TPROXY routes: %w", err)
		}
		defer func() {
			if !flushed && !ok {
				undo()
			}
		}()
	}

	rs := Render(p)
	if e.corrupt != nil {
		e.corrupt(rs)
	}
	// intact: the live table is the recorded one. Proved by the
	// generation when nothing at all was committed since shunt's last
	// change, else by reading the table back.
	intact, unchangedGen := false, false
	// absent: the table is known not to exist, as of generation gen0.
	absent := false
	gen0, gen0err := gc.get()
	var prevRS *Ruleset
	if prev != nil && prev.Plan != nil {
		if k != nil && k.gen != 0 && gen0err == nil && gen0 == k.gen {
			intact, unchangedGen, prevRS = true, true, k.rs
		}
		if !intact {
			live, err := readTable(c, gc, readHow{legacy: legacyRecord(prev)})
			if err != nil && !errors.Is(err, errNoTable) {
				return fmt.Errorf("install: %w", err)
			}
			absent = errors.Is(err, errNoTable)
			intact = live != nil && live.record(textsOf(prev)) == prev.Applied["inet"] && hooksAsRendered(live, rs)
		}
	} else if gen0err == nil {
		if absent, err = tableAbsent(c); err != nil {
			return fmt.Errorf("install: %w", err)
		}
	}
	incremental := false
	if intact {
		if prevRS == nil {
			prevRS = Render(prev.Plan)
		}
		incremental = prevRS.skeleton() == rs.skeleton()
	}
	// apply sends what queue adds as one batch; gen is the ruleset
	// generation the kernel reported right after it (0: not known).
	var gen uint32
	var echoed []dumpedRule
	apply := func(queue func(*batch) error, echo bool) error {
		var err error
		gen, echoed, err = applyBatch(gc, queue, echo)
		return err
	}
	// genNow is the generation as of now: the batch's answer, when the
	// batch was the last request.
	genNow := func() (uint32, error) {
		if gen != 0 {
			return gen, nil
		}
		return gc.get()
	}
	// The record's file and plan are prepared while the kernel works,
	// unless the install may turn out to change nothing.
	plan := p.Clone()
	samePlan := incremental && prev.Plan.Equal(p)
	var pending *redirect.PendingState
	if !samePlan {
		pending = redirect.PrepareState(e.opts.StateDir, plan)
		defer pending.Abort()
	}
	how := "table written"
	var ferr error
	if incremental {
		n := 0
		ferr = apply(func(q *batch) error {
			var err error
			n, err = queueElementChanges(q.Conn, prevRS, rs)
			return err
		}, false)
		if ferr == nil && n == 0 && samePlan {
			ok = true
			e.log.Debug("nftables capture already installed")
			return nil
		}
		how = fmt.Sprintf("%d set elements changed", n)
	} else if absent && gen0err == nil {
		// Nothing to replace: a batch that deletes nothing leaves the
		// kernel no deferred clean-up, so closing the socket (the
		// process's exit, for an init container) does not wait for an
		// RCU grace period.
		how = "table created"
		if e.afterCheck != nil {
			e.afterCheck()
		}
		ferr = apply(func(q *batch) error { return queueFreshTable(q, rs) }, true)
		// The table was absent at gen0. Unless this batch was the only
		// commit since (or, refused, none was), another tool may have
		// made one in between, which the batch then added to or
		// clashed with: write it whole.
		want := gen0 + 1
		if ferr != nil {
			want = gen0
		}
		if g, err := genNow(); err != nil || g != want {
			how = "table written"
			created := ferr == nil
			if ferr = apply(func(q *batch) error { return queueTable(q, rs) }, true); ferr != nil && created {
				e.remember(nil)
				return fmt.Errorf("install: table inet %s was created beside another tool's change, and rewriting it failed: %w", TableName, ferr)
			}
		}
	} else {
		ferr = apply(func(q *batch) error { return queueTable(q, rs) }, true)
	}
	if ferr != nil {
		e.remember(nil)
		return fmt.Errorf("install: apply table inet %s (nothing was changed): %w", TableName, ferr)
	}
	flushed = true
	if prev != nil && prev.Plan != nil && prev.Plan.InboundTProxy != nil {
		// The rules no longer use what the previous plan routed.
		if err := tproxyroute.Remove(e.opts.NetnsPath, prev.Plan.InboundTProxy, p.InboundTProxy, familyLabels(p)); err != nil {
			e.log.Warn("could not remove the previous TPROXY routes", "err", err)
		}
	}
	st := &redirect.State{Engine: Name, Netns: e.opts.NetnsPath, Plan: plan, InstalledAt: time.Now().UTC(), Families: familyLabels(p)}
	next := &known{st: st, rs: rs}
	g, gerr := genNow()
	if incremental && unchangedGen && gerr == nil && g == k.gen+1 {
		// Only this batch was committed since the table was last read:
		// the rules are as recorded and the sets as sent.
		st.Applied = map[string]string{"inet": withSets(prev.Applied["inet"], sentSets(rs))}
		next.gen = g
	} else {
		// A whole table written as the only commit since gen0 is
		// as sent but for the kernel's encoding of its rules: only
		// the rules need reading.
		read := readHow{}
		if gen0err == nil && gerr == nil && g == gen0+1 {
			read = readHow{sets: sentSets(rs), asSent: rs}
			if len(echoed) == rs.ruleCount() {
				// The batch's echoes are the rules as listed.
				read.rules = echoed
			}
		}
		applied, err := e.readBack(c, gc, rs, read)
		if err != nil {
			return fmt.Errorf("install: table written but %w", err)
		}
		st.Applied = map[string]string{"inet": applied}
		if read.rules != nil {
			// Nothing was read from the kernel: the record is the
			// table as of generation g, with no dump that a later
			// commit could have reached.
			next.gen = g
		} else if g2, err := gc.get(); gerr == nil && err == nil && g2 == g {
			next.gen = g
		}
	}
	st.Chosen = e.chosen
	if st.Chosen == "" && prev != nil {
		st.Chosen = prev.Chosen
	}
	if pending == nil {
		pending = redirect.PrepareState(e.opts.StateDir, plan)
		defer pending.Abort()
	}
	if err := pending.Save(st); err != nil {
		e.remember(nil)
		return fmt.Errorf("install: table written but %w", err)
	}
	e.remember(next)
	ok = true
	e.log.Debug("nftables capture installed", "how", how)
	return nil
}

// withSets replaces a record's set lines.
func withSets(record string, sets []setSnap) string {
	var b strings.Builder
	for _, s := range sets {
		b.WriteString(s.line() + "\n")
	}
	for _, l := range strings.Split(record, "\n") {
		if l != "" && !strings.HasPrefix(l, "set ") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// readBack records the table as the kernel now holds it: the reference for
// drift detection.
func (e *Engine) readBack(c *nftables.Conn, g *genConn, rs *Ruleset, how readHow) (string, error) {
	snap, err := readTable(c, g, how)
	if err != nil {
		return "", err
	}
	texts := snap.texts(rs)
	return snap.record(func(chain, d string) (string, bool) { t, ok := texts[chain+" "+d]; return t, ok }), nil
}

// textsOf recovers from a record the text of each rule, by chain and
// digest: rules of two chains may share a digest and still read
// differently (in a record of an earlier build, whose digests came from
// the netlink library's decoding, which leaves out the tproxy expression,
// the IPv4 and IPv6 TPROXY rules digest alike).
func textsOf(st *redirect.State) func(chain, digest string) (string, bool) {
	m := map[string]string{}
	if st != nil {
		for _, l := range strings.Split(st.Applied["inet"], "\n") {
			rest, ok := strings.CutPrefix(l, "rule ")
			if !ok {
				continue
			}
			i, j := strings.Index(rest, ": "), strings.LastIndex(rest, " #")
			if i < 0 || j < i {
				continue
			}
			m[rest[:i]+" "+rest[j+2:]] = rest[i+2 : j]
		}
	}
	return func(chain, d string) (string, bool) { t, ok := m[chain+" "+d]; return t, ok }
}

// skeleton is the ruleset without set elements: equal skeletons differ only
// in what their sets hold.
// hooksAsRendered reports whether the live base chains hook where rs's
// do. A table a build with other priorities wrote (the nat chains were
// at dstnat before) is as recorded, yet must be written again for the
// ordering beside other tools' nat chains to hold.
func hooksAsRendered(live *snapshot, rs *Ruleset) bool {
	lines := map[string]string{}
	for _, c := range live.chains {
		lines[c.name] = c.line + " "
	}
	for _, c := range rs.chains {
		if c.base != nil && !strings.Contains(lines[c.name], fmt.Sprintf(" hook %s priority %d ", c.base.hook, c.base.priority)) {
			return false
		}
	}
	return true
}

func (rs *Ruleset) skeleton() string {
	var b strings.Builder
	for _, s := range rs.sets {
		fmt.Fprintf(&b, "set %s %d %s %v\n", s.name, s.id, s.kind.typeText(), s.interval)
	}
	for _, c := range rs.chains {
		fmt.Fprintf(&b, "chain %s %v\n", c.name, c.base)
		for _, r := range c.rules {
			b.WriteString(r.String() + "\n")
		}
	}
	return b.String()
}

func elemKey(e nftables.SetElement) string {
	return fmt.Sprintf("%s/%v", hex.EncodeToString(e.Key), e.IntervalEnd)
}

// queueElementChanges adds to c's batch the element deletions, then
// additions, that turn old's sets into rs's, and returns how many.
func queueElementChanges(c *nftables.Conn, old, rs *Ruleset) (int, error) {
	t := table()
	n := 0
	for i, s := range rs.sets {
		o := old.sets[i]
		have := map[string]bool{}
		for _, e := range o.elems {
			have[elemKey(e)] = true
		}
		want := map[string]bool{}
		for _, e := range s.elems {
			want[elemKey(e)] = true
		}
		var del, add []nftables.SetElement
		for _, e := range o.elems {
			if !want[elemKey(e)] {
				del = append(del, e)
			}
		}
		for _, e := range s.elems {
			if !have[elemKey(e)] {
				add = append(add, e)
			}
		}
		ns := &nftables.Set{Table: t, ID: s.id, Name: s.name, KeyType: s.kind.keyType(), Interval: s.interval,
			Concatenation: s.kind == kindEndpoint4 || s.kind == kindEndpoint6}
		if len(del) > 0 {
			if err := c.SetDeleteElements(ns, del); err != nil {
				return 0, fmt.Errorf("set %s: %w", s.name, err)
			}
		}
		if len(add) > 0 {
			if err := c.SetAddElements(ns, add); err != nil {
				return 0, fmt.Errorf("set %s: %w", s.name, err)
			}
		}
		n += len(del) + len(add)
	}
	return n, nil
}

// Uninstall implements redirect.Engine: it deletes table inet shunt, and
// nothing else. Without a record (the state directory was wiped) the table
// is still found by its name.
func (e *Engine) Uninstall(ctx context.Context) error {
	unlock, prev, err := e.begin(ctx, "uninstall")
	if err != nil {
		return err
	}
	defer unlock()
	e.socks.drop()
	c, done, err := dial(e.opts.NetnsPath)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	defer done()
	absent, err := tableAbsent(c)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	found := !absent
	if found {
		c.DelTable(table())
		if err := c.Flush(); err != nil {
			return fmt.Errorf("uninstall: delete table inet %s: %w", TableName, err)
		}
	}
	if prev != nil && prev.Plan != nil && prev.Plan.InboundTProxy != nil {
		if err := tproxyroute.Remove(e.opts.NetnsPath, prev.Plan.InboundTProxy, nil, nil); err != nil {
			return fmt.Errorf("uninstall TPROXY routes: %w", err)
		}
	}
	e.remember(nil)
	if err := redirect.RemoveState(e.opts.StateDir); err != nil {
		return err
	}
	if !found && prev == nil {
		return redirect.ErrNotInstalled
	}
	return nil
}

// Status implements redirect.Engine.
func (e *Engine) Status(ctx context.Context) (*redirect.Status, error) {
	if s := e.unchangedStatus(); s != nil {
		return s, nil
	}
	st, err := redirect.LoadState(e.opts.StateDir)
	if err != nil {
		return nil, err
	}
	if st != nil && st.Engine != Name {
		return nil, fmt.Errorf("status: the capture here was installed by the %s engine", st.Engine)
	}
	c, done, err := dial(e.opts.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	defer done()
	s := &redirect.Status{Engine: Name}
	g, err := dialGen(e.opts.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	defer g.Close()
	live, err := readTable(c, g, readHow{legacy: legacyRecord(st)})
	if err != nil && !errors.Is(err, errNoTable) {
		return nil, fmt.Errorf("status: %w", err)
	}
	if st == nil {
		if live != nil {
			s.Drift = append(s.Drift, fmt.Sprintf("table inet %s present but no installation is recorded in %s", TableName, e.opts.StateDir))
		}
		return s, nil
	}
	s.Installed = true
	s.Plan = st.Plan
	if st.Chosen != "" {
		s.Notes = append(s.Notes, "engine "+Name+": "+st.Chosen)
	}
	s.Notes = append(s.Notes, st.Skipped...)
	if st.Plan != nil && st.Plan.ResolvConf != "" {
		s.Notes = append(s.Notes, "nameservers read from "+st.Plan.ResolvConf)
	}
	routes, err := e.routeDrift(st)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if live == nil {
		s.Drift = append(s.Drift, fmt.Sprintf("table inet %s is missing", TableName))
		s.Drift = append(s.Drift, routes...)
		return s, nil
	}
	rec := live.record(textsOf(st))
	s.Drift = diffLines(st.Applied["inet"], rec)
	if st.Plan != nil && strings.Contains(strings.Join(s.Drift, "\n"), ": set ") {
		s.Drift = append(s.Drift, elementDrift(sentSets(Render(st.Plan)), live.sets)...)
	}
	s.Drift = append(s.Drift, routes...)
	s.Sections = sections(live, textsOf(st))
	return s, nil
}

// routeDrift reports the TPROXY policy rules and routes of the recorded
// plan that are missing: they live outside the table, so the nftables
// generation says nothing about them.
func (e *Engine) routeDrift(st *redirect.State) ([]string, error) {
	if st == nil || st.Plan == nil || st.Plan.InboundTProxy == nil {
		return nil, nil
	}
	return tproxyroute.Drift(e.opts.NetnsPath, st.Plan.InboundTProxy, st.Families)
}

// familyLabels names the families a plan captures as records do.
func familyLabels(p *redirect.Plan) []string {
	var out []string
	for _, f := range families(p) {
		out = append(out, f.label())
	}
	return out
}

// elementDrift names the elements that differ in sets whose contents
// drifted (at most a few per set: a report, not a dump).
func elementDrift(want, live []setSnap) []string {
	const most = 10
	var out []string
	byName := map[string]setSnap{}
	for _, l := range live {
		byName[l.name] = l
	}
	for _, w := range want {
		l, ok := byName[w.name]
		if !ok || l.line() == w.line() {
			continue
		}
		lt, wt := l.texts(), w.texts()
		have := map[string]bool{}
		for _, x := range lt {
			have[x] = true
		}
		should := map[string]bool{}
		n := 0
		for _, x := range wt {
			should[x] = true
			if !have[x] && n < most {
				out = append(out, fmt.Sprintf("set %s: missing element %s", w.name, x))
				n++
			}
		}
		for _, x := range lt {
			if !should[x] && n < most {
				out = append(out, fmt.Sprintf("set %s: unexpected element %s", w.name, x))
				n++
			}
		}
	}
	return out
}

// unchangedStatus is the status of a long-lived engine (the agent's
// reconcile loop asks every period) when neither its record nor the
// ruleset changed since its last install: the nftables generation proves
// the table is as recorded without reading its sets. Nil when that is not
// known; the caller then reads everything.
func (e *Engine) unchangedStatus() *redirect.Status {
	k := e.cached()
	if k == nil || k.gen == 0 {
		return nil
	}
	gc, err := dialGen(e.opts.NetnsPath)
	if err != nil {
		return nil
	}
	defer gc.Close()
	g, err := gc.get()
	if err != nil || g != k.gen {
		return nil
	}
	if d, err := e.routeDrift(k.st); err != nil || len(d) > 0 {
		return nil // the full status reports it
	}
	s := &redirect.Status{Engine: Name, Installed: true, Plan: k.st.Plan}
	if k.st.Chosen != "" {
		s.Notes = append(s.Notes, "engine "+Name+": "+k.st.Chosen)
	}
	s.Notes = append(s.Notes, k.st.Skipped...)
	s.Notes = append(s.Notes, fmt.Sprintf("nothing was committed to nftables since this engine's last change (generation %d)", g))
	return s
}

// sections lists each set's size and each chain's rules.
func sections(live *snapshot, textOf func(chain, digest string) (string, bool)) []redirect.Section {
	sets := redirect.Section{Name: "inet " + TableName + " sets (kernel elements, interval ends included)"}
	for _, st := range live.sets {
		sets.Lines = append(sets.Lines, fmt.Sprintf("%s: %d", st.name, len(st.elems)))
	}
	out := []redirect.Section{sets}
	for _, c := range live.chains {
		sec := redirect.Section{Name: "inet " + TableName + " " + strings.TrimPrefix(c.line, "chain ")}
		for _, r := range c.rules {
			text, ok := textOf(c.name, r.digest)
			if !ok {
				text = fmt.Sprintf("(a rule shunt did not write, handle %d)", r.handle)
			}
			sec.Lines = append(sec.Lines, text)
		}
		out = append(out, sec)
	}
	return out
}

// diffLines reports lines missing from, or added to, the live table
// compared with what install recorded.
func diffLines(applied, live string) []string {
	if applied == live {
		return nil
	}
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			if l != "" {
				m[l]++
			}
		}
		return m
	}
	a, l := count(applied), count(live)
	var out []string
	show := func(line string) string {
		if i := strings.LastIndex(line, " #"); i >= 0 && strings.HasPrefix(line, "rule ") {
			return line[:i]
		}
		return line
	}
	for _, line := range strings.Split(applied, "\n") {
		if line != "" && l[line] < a[line] {
			out = append(out, "missing: "+show(line))
			l[line]++
		}
	}
	a2 := count(applied)
	for _, line := range strings.Split(live, "\n") {
		if line == "" {
			continue
		}
		if a2[line] == 0 {
			out = append(out, "unexpected: "+show(line))
		} else {
			a2[line]--
		}
	}
	if len(out) == 0 {
		out = append(out, "rules are reordered")
	}
	return out
}

package iptables

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shunt-dev/shunt/redirect"
)

// Uninstall implements redirect.Engine. It removes shunt's chains and its
// marked jumps, and nothing else. Without a recorded state (the state
// directory was wiped) it still finds shunt's rules by their names and
// markers, in whichever backend holds them.
func (e *Engine) Uninstall(ctx context.Context) error {
	unlock, prev, err := e.begin(ctx, "uninstall")
	if err != nil {
		return err
	}
	defer unlock()
	vs := e.variants()
	// Variants without tables in the kernel hold nothing to remove: only
	// the others are read.
	empty := map[Commands]*Dump{}
	vs = e.emptyDumps(vs, empty)
	vs, found := e.uninstallOverNetlink(ctx, vs)
	dumps, recorded, errs := e.uninstallDumps(ctx, vs, prev)
	for i, d := range dumps {
		if d != nil && !d.Shunt.Empty() {
			found = true
		} else {
			dumps[i] = nil // nothing to remove there
		}
	}
	applyErrs := e.parallel(len(vs), func(i int) error {
		if dumps[i] == nil {
			return nil
		}
		err := e.applyFamily(ctx, vs[i].cmds, newRuleset(), dumps[i])
		if err != nil && recorded[i] {
			// The live rules are not what the record says: remove what
			// is really there.
			e.log.Debug("uninstall from the record failed; reading the rules", "variant", vs[i], "err", err)
			err = e.applyFamily(ctx, vs[i].cmds, newRuleset(), nil)
		}
		return err
	})
	var failed error
	for i := range vs {
		if err := errors.Join(errs[i], applyErrs[i]); err != nil {
			failed = errors.Join(failed, fmt.Errorf("uninstall %s rules: %w", vs[i], err))
		}
	}
	if failed != nil {
		return failed
	}
	if prev != nil {
		// An install that never finished may have routed its plan too.
		for _, p := range []*redirect.Plan{prev.Plan, intentPlan(prev)} {
			if p == nil || p.InboundTProxy == nil {
				continue
			}
			if err := e.removeTProxyRoutes(p.InboundTProxy, nil, nil); err != nil {
				return fmt.Errorf("uninstall TPROXY routes: %w", err)
			}
		}
	}
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
	st, err := redirect.LoadState(e.opts.StateDir)
	if err != nil {
		return nil, err
	}
	s := &redirect.Status{Engine: e.Name()}
	if st == nil {
		// Rules may exist without a record; report them as drift.
		vs := e.variants()
		dumps, _ := e.dumpAll(ctx, vs)
		for i, d := range dumps {
			if d != nil && !d.Shunt.Empty() {
				s.Drift = append(s.Drift, fmt.Sprintf("%s: shunt rules present but no installation is recorded in %s", vs[i], e.opts.StateDir))
			}
		}
		return s, nil
	}
	if st.Engine != e.Name() {
		return nil, fmt.Errorf("status: the capture here was installed by the %s engine", st.Engine)
	}
	// A record holding only an intent is an install that never finished:
	// nothing is known to be installed, but rules may be live.
	s.Installed = len(st.Families) > 0
	s.Backend = st.Backend
	s.Plan = st.Plan
	s.Notes = append(s.Notes, st.Skipped...)
	if st.Plan != nil && st.Plan.ResolvConf != "" {
		s.Notes = append(s.Notes, "nameservers read from "+st.Plan.ResolvConf)
	}
	if in := st.Intent; in != nil {
		s.Drift = append(s.Drift, in.String())
		if !s.Installed {
			s.Backend = in.Backend
			s.Plan = in.Plan
		}
	}
	err = e.inNetns(func() error {
		for _, fs := range st.Families {
			f := family(fs)
			cmds := e.commands(Backend(st.Backend), f)
			d, err := e.dump(ctx, cmds)
			if err != nil {
				return err
			}
			s.Drift = append(s.Drift, diffLines(string(f), st.Applied[fs], d.Shunt.String())...)
			s.Sections = append(s.Sections, e.counters(ctx, f, cmds, d.Shunt)...)
		}
		if in := st.Intent; in != nil {
			// Show what the interrupted install left where the record
			// says nothing.
			for _, fs := range in.Families {
				if in.Backend == st.Backend && contains(st.Families, fs) {
					continue
				}
				cmds := e.commands(Backend(in.Backend), family(fs))
				if !available(cmds) {
					continue
				}
				d, err := e.dump(ctx, cmds)
				if err != nil {
					return err
				}
				if !d.Shunt.Empty() {
					s.Sections = append(s.Sections, e.counters(ctx, family(fs), cmds, d.Shunt)...)
				}
			}
		}
		return nil
	})
	if err == nil && s.Installed && st.Plan != nil && st.Plan.InboundTProxy != nil {
		var fams []family
		for _, f := range st.Families {
			fams = append(fams, family(f))
		}
		drift, derr := e.tproxyDrift(st.Plan.InboundTProxy, fams)
		if derr != nil {
			return s, derr
		}
		s.Drift = append(s.Drift, drift...)
	}
	return s, err
}

// counters lists each shunt chain with its rules and packet counters, read
// with `iptables -v -S` (not through go-iptables, which runs `iptables
// --version` first and compiles regular expressions at every process start,
// status or not).
func (e *Engine) counters(ctx context.Context, f family, cmds Commands, rs *Ruleset) []redirect.Section {
	secs := max(int(e.opts.LockWait/time.Second), 1)
	var out []redirect.Section
	for _, table := range sortedTables(rs.Tables) {
		t := rs.Tables[table]
		for _, chain := range sortedKeys(t.Chains) {
			var rules []string
			listing, err := e.run.run(ctx, "", cmds.Iptables, "-t", table, "-v", "-S", chain, "--wait", fmt.Sprint(secs))
			if err != nil {
				rules = []string{"error: " + err.Error()}
			}
			for _, l := range strings.Split(listing, "\n") {
				if l = counterPrefixLast(l); strings.HasPrefix(l, "-A ") {
					rules = append(rules, withCounters(l))
				}
			}
			out = append(out, redirect.Section{Name: fmt.Sprintf("%s %s/%s", f, table, chain), Lines: rules})
		}
	}
	return out
}

// counterPrefixLast turns iptables-nft's "[PKTS:BYTES] -A ..." (the -save
// form it prints with -v -S) into legacy iptables' "-A ... -c PKTS BYTES".
func counterPrefixLast(l string) string {
	rest, ok := strings.CutPrefix(l, "[")
	if !ok {
		return l
	}
	counts, rule, ok := strings.Cut(rest, "] ")
	pkts, bytes, ok2 := strings.Cut(counts, ":")
	if !ok || !ok2 || !allDigits(pkts) || !allDigits(bytes) {
		return l
	}
	return rule + " -c " + pkts + " " + bytes
}

func allDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// diffLines reports rules missing from, or added to, the live set compared
// with what install applied.
func diffLines(label, applied, live string) []string {
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
	for _, line := range strings.Split(applied, "\n") {
		if line != "" && l[line] < a[line] {
			out = append(out, fmt.Sprintf("%s: missing: %s", label, line))
			l[line]++
		}
	}
	a2 := count(applied)
	for _, line := range strings.Split(live, "\n") {
		if line != "" && a2[line] == 0 {
			out = append(out, fmt.Sprintf("%s: unexpected: %s", label, line))
		} else if line != "" {
			a2[line]--
		}
	}
	if len(out) == 0 {
		out = append(out, label+": rules are reordered")
	}
	return out
}

// RenderUninstall returns the iptables-restore input that uninstall would
// apply, per backend and family holding shunt rules. For iptables-nft,
// uninstall deletes the same rules and chains in one nf_tables transaction
// instead, and applies this input only when that cannot be used.
func (e *Engine) RenderUninstall(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	vs := e.variants()
	dumps, errs := e.dumpAll(ctx, vs)
	for i, d := range dumps {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if !d.Shunt.Empty() {
			out[vs[i].String()] = RestoreInput(d.Shunt, newRuleset())
		}
	}
	return out, nil
}

// withCounters moves the "-c PKTS BYTES" that iptables -v -S prints inside a
// rule to the front, where a reader looks for it.
func withCounters(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+2 < len(f); i++ {
		if f[i] == "-c" {
			rest := append(append([]string{}, f[:i]...), f[i+3:]...)
			return fmt.Sprintf("[%s pkts %s bytes] %s", f[i+1], f[i+2], strings.Join(rest, " "))
		}
	}
	return rule
}

// uninstallDumps returns what to remove in each variant. For the variants a
// finished install recorded, the record says it: the rules read back after
// that install, exactly as the -save program prints them, so no exec is
// needed to learn them (recorded[i] is then true, and a removal that does
// not match the live rules falls back to reading them). The others are
// read.
func (e *Engine) uninstallDumps(ctx context.Context, vs []variant, prev *redirect.State) (dumps []*Dump, recorded []bool, errs []error) {
	dumps = make([]*Dump, len(vs))
	recorded = make([]bool, len(vs))
	errs = make([]error, len(vs))
	var todo []int
	for i, v := range vs {
		if prev != nil && prev.Intent == nil && prev.Backend == string(v.b) && contains(prev.Families, string(v.f)) {
			if d, err := ParseSave(prev.Applied[string(v.f)]); err == nil && !d.Shunt.Empty() {
				dumps[i], recorded[i] = d, true
				continue
			}
		}
		todo = append(todo, i)
	}
	rest := make([]variant, len(todo))
	for j, i := range todo {
		rest[j] = vs[i]
	}
	rd, re := e.dumpAll(ctx, rest)
	for j, i := range todo {
		dumps[i], errs[i] = rd[j], re[j]
	}
	return dumps, recorded, errs
}

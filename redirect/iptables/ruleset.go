package iptables

import (
	"bufio"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// ChainPrefix marks every chain shunt owns.
const ChainPrefix = "SHUNT_"

// Marker is the comment on every rule shunt adds to a built-in chain; it is
// how shunt finds its rules again without touching anybody else's.
const Marker = "shunt-managed"

// tables shunt may touch, in the order they are applied.
var tableOrder = []string{"raw", "mangle", "nat", "filter"}

// Ruleset is shunt's own part of one family's tables: the jumps it adds to
// built-in chains and the chains it owns. It is what install applies and
// what is parsed back from iptables-save.
type Ruleset struct {
	Tables map[string]*Table
}

// Table holds shunt's rules in one table.
type Table struct {
	// Jumps are rules in built-in chains, as "CHAIN spec..." without -A.
	Jumps []string
	// Chains maps a SHUNT_ chain to its rules (specs without "-A CHAIN").
	Chains map[string][]string
}

func newRuleset() *Ruleset { return &Ruleset{Tables: map[string]*Table{}} }

func (r *Ruleset) table(name string) *Table {
	t, ok := r.Tables[name]
	if !ok {
		t = &Table{Chains: map[string][]string{}}
		r.Tables[name] = t
	}
	return t
}

// Empty reports whether the ruleset holds nothing of shunt's.
func (r *Ruleset) Empty() bool {
	for _, t := range r.Tables {
		if len(t.Jumps) > 0 || len(t.Chains) > 0 {
			return false
		}
	}
	return true
}

// String renders the ruleset in iptables-save's order and form, one table
// after another; equal rulesets render equally, which drift detection uses.
func (r *Ruleset) String() string {
	var b strings.Builder
	for _, name := range sortedTables(r.Tables) {
		t := r.Tables[name]
		if len(t.Jumps) == 0 && len(t.Chains) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", name)
		for _, c := range sortedKeys(t.Chains) {
			fmt.Fprintf(&b, ":%s\n", c)
		}
		for _, j := range sortedJumps(t.Jumps) {
			fmt.Fprintf(&b, "-A %s\n", j)
		}
		for _, c := range sortedKeys(t.Chains) {
			for _, rule := range t.Chains[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, rule)
			}
		}
	}
	return b.String()
}

func sortedTables(m map[string]*Table) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return tableRank(keys[i]) < tableRank(keys[j]) || tableRank(keys[i]) == tableRank(keys[j]) && keys[i] < keys[j]
	})
	return keys
}

func tableRank(t string) int {
	if i := slices.Index(tableOrder, t); i >= 0 {
		return i
	}
	return len(tableOrder)
}

func sortedKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Dump is the parsed output of iptables-save: every table, with the number
// of rules that are not shunt's (for backend detection), and shunt's own part.
type Dump struct {
	Tables     []string
	ForeignLen int
	Shunt      *Ruleset
}

// ParseSave reads iptables-save output (with or without -c counters).
func ParseSave(out string) (*Dump, error) {
	d := &Dump{Shunt: newRuleset()}
	var table string
	s := bufio.NewScanner(strings.NewReader(out))
	s.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if strings.HasPrefix(line, "[") { // -c counters prefix
			if i := strings.Index(line, "] "); i > 0 {
				line = line[i+2:]
			}
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			d.Tables = append(d.Tables, table)
		case line == "COMMIT":
			table = ""
		case strings.HasPrefix(line, ":"):
			if table == "" {
				return nil, fmt.Errorf("iptables-save line %d: chain outside a table", n)
			}
			name := strings.Fields(line[1:])[0]
			if strings.HasPrefix(name, ChainPrefix) {
				t := d.Shunt.table(table)
				if _, ok := t.Chains[name]; !ok {
					t.Chains[name] = nil
				}
			}
		case strings.HasPrefix(line, "-A "):
			if table == "" {
				return nil, fmt.Errorf("iptables-save line %d: rule outside a table", n)
			}
			rest := line[3:]
			chain, spec, _ := strings.Cut(rest, " ")
			switch {
			case strings.HasPrefix(chain, ChainPrefix):
				t := d.Shunt.table(table)
				t.Chains[chain] = append(t.Chains[chain], spec)
			case hasMarker(spec):
				t := d.Shunt.table(table)
				t.Jumps = append(t.Jumps, rest)
			default:
				d.ForeignLen++
			}
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read iptables-save output: %w", err)
	}
	for name, t := range d.Shunt.Tables {
		if len(t.Jumps) == 0 && len(t.Chains) == 0 {
			delete(d.Shunt.Tables, name)
		}
	}
	return d, nil
}

func hasMarker(spec string) bool {
	return strings.Contains(spec, "--comment "+Marker+" ") || strings.HasSuffix(spec, "--comment "+Marker) ||
		strings.Contains(spec, `--comment "`+Marker)
}

// RestoreInput returns the iptables-restore --noflush input that turns the
// current shunt rules into the desired ones, in one batch: chains declared
// (which empties them), old jumps deleted, new jumps and rules appended,
// chains no longer wanted deleted. Tables with nothing to do are left out.
func RestoreInput(current, desired *Ruleset) string {
	var b strings.Builder
	names := map[string]*Table{}
	for n, t := range current.Tables {
		names[n] = t
	}
	for n, t := range desired.Tables {
		names[n] = t
	}
	for _, name := range sortedTables(names) {
		cur, want := current.Tables[name], desired.Tables[name]
		if cur == nil {
			cur = &Table{Chains: map[string][]string{}}
		}
		if want == nil {
			want = &Table{Chains: map[string][]string{}}
		}
		if slices.Equal(cur.Jumps, want.Jumps) && chainsEqual(cur.Chains, want.Chains) {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", name)
		declared := map[string]bool{}
		for _, c := range sortedKeys(want.Chains) {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
			declared[c] = true
		}
		var stale []string
		for _, c := range sortedKeys(cur.Chains) {
			if !declared[c] {
				// Declaring flushes it, so the -X below finds it empty.
				fmt.Fprintf(&b, ":%s - [0:0]\n", c)
				stale = append(stale, c)
			}
		}
		// Jumps that stay are left where they are, so their position
		// among other tools' rules does not change on every update.
		for _, j := range cur.Jumps {
			if !slices.Contains(want.Jumps, j) {
				fmt.Fprintf(&b, "-D %s\n", j)
			}
		}
		for _, j := range want.Jumps {
			if !slices.Contains(cur.Jumps, j) {
				fmt.Fprintf(&b, "-A %s\n", j)
			}
		}
		for _, c := range sortedKeys(want.Chains) {
			for _, r := range want.Chains[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, r)
			}
		}
		for _, c := range stale {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func chainsEqual(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// builtinOrder is the order iptables-save lists built-in chains in.
var builtinOrder = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// sortedJumps orders jumps by built-in chain as iptables-save does, keeping
// the order of rules within a chain.
func sortedJumps(jumps []string) []string {
	out := slices.Clone(jumps)
	rank := func(j string) int {
		chain, _, _ := strings.Cut(j, " ")
		if i := slices.Index(builtinOrder, chain); i >= 0 {
			return i
		}
		return len(builtinOrder)
	}
	sort.SliceStable(out, func(a, b int) bool { return rank(out[a]) < rank(out[b]) })
	return out
}

package iptables

import (
	"context"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// Uninstall removes what the record says without reading the rules first;
// when the live rules have drifted from the record, it still removes
// exactly what is there and nothing else.
func TestUninstallWhenRulesDriftedFromTheRecord(t *testing.T) {
	testenv.RequireBinary(t, "iptables-nft-restore")
	for name, drift := range map[string][][]string{
		"none":            nil,
		"jump deleted":    {{"-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment", "shunt-managed", "-j", "SHUNT_OUTPUT"}},
		"chain flushed":   {{"-t", "nat", "-F", "SHUNT_OUTPUT"}},
		"jump duplicated": {{"-t", "nat", "-I", "OUTPUT", "-m", "comment", "--comment", "shunt-managed", "-j", "SHUNT_OUTPUT"}},
		"rule added":      {{"-t", "nat", "-A", "SHUNT_OUTPUT", "-p", "tcp", "--dport", "7", "-j", "RETURN"}},
	} {
		t.Run(name, func(t *testing.T) {
			n := testenv.NewNetns(t, "unin")
			n.MustRun("iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
			before := n.MustRun("iptables-nft-save", "-t", "nat")
			eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir()})
			ctx := context.Background()
			p, err := redirect.NewConfig().Plan(redirect.OSHost{})
			if err != nil {
				t.Fatal(err)
			}
			if err := eng.Install(ctx, p); err != nil {
				t.Fatal(err)
			}
			for _, args := range drift {
				n.MustRun("iptables-nft", args...)
			}
			if err := eng.Uninstall(ctx); err != nil {
				t.Fatalf("uninstall: %v", err)
			}
			if rules := n.ShuntRules(); rules != "" {
				t.Fatalf("left behind:\n%s", rules)
			}
			if after := n.MustRun("iptables-nft-save", "-t", "nat"); stripComments(after) != stripComments(before) {
				t.Fatalf("nat table not as before:\n%s\nwant:\n%s", after, before)
			}
		})
	}
}

func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

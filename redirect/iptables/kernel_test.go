package iptables

import (
	"context"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// The kernel, not the programs, says which variants hold tables: a
// namespace nobody touched has none, and each variant shows up only once
// one of its programs used a table there.
func TestKernelTablesFollowWhatWasUsed(t *testing.T) {
	testenv.RequireBinary(t, "iptables-nft")
	testenv.RequireBinary(t, "iptables-legacy")
	n := testenv.NewNetns(t, "kern")
	eng := New(Options{NetnsPath: n.Path()})
	read := func() map[variantKey]bool {
		t.Helper()
		var has map[variantKey]bool
		var ok bool
		if err := eng.inNetns(func() error { has, ok = kernelTables(); return nil }); err != nil || !ok {
			t.Fatalf("kernel tables: ok=%v err=%v", ok, err)
		}
		return has
	}
	if has := read(); has[variantKey{NFT, ipv4}] || has[variantKey{Legacy, ipv4}] || has[variantKey{NFT, ipv6}] || has[variantKey{Legacy, ipv6}] {
		t.Fatalf("fresh namespace: %v, want no tables", has)
	}
	n.MustRun("iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
	if has := read(); !has[variantKey{NFT, ipv4}] || has[variantKey{NFT, ipv6}] || has[variantKey{Legacy, ipv4}] {
		t.Fatalf("after iptables-nft: %v, want nft ipv4 only", has)
	}
	n.MustRun("ip6tables-legacy", "-t", "filter", "-L", "-n")
	if has := read(); !has[variantKey{Legacy, ipv6}] || has[variantKey{Legacy, ipv4}] {
		t.Fatalf("after ip6tables-legacy: %v, want legacy ipv6 too", has)
	}
}

// A namespace that holds foreign iptables-nft rules still steers auto to
// nft and keeps them; one that holds legacy rules steers it to legacy.
func TestAutoBackendFollowsTheKernel(t *testing.T) {
	testenv.RequireBinary(t, "iptables-nft-restore")
	testenv.RequireBinary(t, "iptables-legacy-restore")
	for _, tc := range []struct{ prog, want string }{{"iptables-legacy", "legacy"}, {"iptables-nft", "nft"}} {
		t.Run(tc.want, func(t *testing.T) {
			n := testenv.NewNetns(t, "auto")
			n.MustRun(tc.prog, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
			eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir()})
			ctx := context.Background()
			c := redirect.NewConfig()
			p, err := c.Plan(redirect.OSHost{})
			if err != nil {
				t.Fatal(err)
			}
			if err := eng.Install(ctx, p); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = eng.Uninstall(ctx) })
			st, err := eng.Status(ctx)
			if err != nil || st.Backend != tc.want {
				t.Fatalf("backend = %q (%v), want %s", st.Backend, err, tc.want)
			}
			if out := n.MustRun(tc.prog+"-save", "-t", "nat"); !strings.Contains(out, "--dport 9 -j ACCEPT") || !strings.Contains(out, "SHUNT_OUTPUT") {
				t.Fatalf("%s-save after install:\n%s", tc.prog, out)
			}
		})
	}
}

package nftables

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestOptionDriftIsReportedAndRestored changes, behind shunt's back, the
// rules, set elements and TPROXY routes of the optional features: status
// names each change and installing again restores the table and routes.
func TestOptionDriftIsReportedAndRestored(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	testenv.RequireBinary(t, "ip")
	ctx := context.Background()
	plans := scenarios(t)
	handle := func(n *testenv.Netns, text string) string {
		for _, l := range strings.Split(nftList(t, n, "-a"), "\n") {
			if strings.Contains(l, text) {
				if i := strings.Index(l, "# handle "); i >= 0 {
					return l[i+len("# handle "):]
				}
			}
		}
		t.Fatalf("no rule %q", text)
		return ""
	}
	cases := []struct {
		name, plan string
		change     func(n *testenv.Netns) []string
		drift      string
	}{
		{"drop-invalid rule deleted", "drop-invalid-nflog", func(n *testenv.Netns) []string {
			return []string{"nft", "delete", "rule", "inet", "shunt", "mangle_prerouting", "handle", handle(n, "ipv4 ct state invalid")}
		}, `missing: rule mangle_prerouting: meta nfproto ipv4 ct state invalid log prefix "shunt-drop-invalid" group 5 drop`},
		{"tproxy rule changed", "drop-invalid-nflog", func(n *testenv.Netns) []string {
			return []string{"nft", "replace", "rule", "inet", "shunt", "tproxy_inbound4", "handle", handle(n, "tproxy ip to"), "meta", "l4proto", "tcp", "tproxy", "ip", "to", ":15007", "meta", "mark", "set", "0x539", "accept"}
		}, `missing: rule tproxy_inbound4: meta l4proto tcp log prefix "shunt-in-tproxy" group 5 tproxy ip to :15006 meta mark set 0x00000539 accept`},
		// Only the statement's family differs: the record's digest of
		// the kernel's encoding of the expressions tells the two apart.
		{"tproxy family changed", "drop-invalid-nflog", func(n *testenv.Netns) []string {
			return []string{"nft", "replace", "rule", "inet", "shunt", "tproxy_inbound4", "handle", handle(n, "tproxy ip to"), "meta", "l4proto", "tcp", "log", "prefix", "shunt-in-tproxy", "group", "5", "tproxy", "ip6", "to", ":15006", "meta", "mark", "set", "0x539", "accept"}
		}, `missing: rule tproxy_inbound4: meta l4proto tcp log prefix "shunt-in-tproxy" group 5 tproxy ip to :15006 meta mark set 0x00000539 accept`},
		{"connmark chain flushed", "drop-invalid-nflog", func(*testenv.Netns) []string {
			return []string{"nft", "flush", "chain", "inet", "shunt", "tproxy_output"}
		}, "missing: rule tproxy_output: ct mark 0x00000539 meta mark set ct mark"},
		{"policy rule deleted", "drop-invalid-nflog", func(*testenv.Netns) []string {
			return []string{"ip", "-4", "rule", "del", "fwmark", "0x539", "lookup", "133"}
		}, "ipv4: policy rule fwmark 0x539 lookup 133 is missing"},
		{"local route deleted", "tproxy", func(*testenv.Netns) []string {
			return []string{"ip", "-6", "route", "del", "local", "default", "dev", "lo", "table", "133"}
		}, "ipv6: route local default dev lo table 133 is missing"},
		{"include element deleted", "include-only", func(*testenv.Netns) []string {
			return []string{"nft", "delete", "element", "inet", "shunt", "include_inbound_ports", "{", "8080", "}"}
		}, "set include_inbound_ports: missing element 8080"},
		{"include element added", "include-only", func(*testenv.Netns) []string {
			return []string{"nft", "add", "element", "inet", "shunt", "include_outbound6", "{", "fd00:99::/64", "}"}
		}, "set include_outbound6: unexpected element fd00:99::"},
		{"vnet rule deleted", "vnet", func(n *testenv.Netns) []string {
			return []string{"nft", "delete", "rule", "inet", "shunt", "vnet4", "handle", handle(n, `iifname "docker0" ip daddr 172.17.0.0/16 return`)}
		}, `missing: rule vnet4: iifname "docker0" ip daddr 172.17.0.0/16 return`},
		{"log removed", "packet-log-kernel", func(n *testenv.Netns) []string {
			return []string{"nft", "replace", "rule", "inet", "shunt", "output4", "handle", handle(n, `shunt-out-redirect`), "tcp", "dport", "@include_outbound_ports", "redirect", "to", ":15001"}
		}, `missing: rule output4: tcp dport @include_outbound_ports log prefix "shunt-out-redirect: " redirect to :15001`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := testenv.NewNetns(t, "nftoptdrift")
			eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
			p := plans[c.plan]
			if err := eng.Install(ctx, p); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = eng.Uninstall(ctx) })
			clean := nftList(t, n)
			routes := n.MustRun("ip", "rule") + n.MustRun("ip", "-6", "rule") + n.MustRun("ip", "route", "show", "table", "all")
			if st, err := eng.Status(ctx); err != nil || len(st.Drift) > 0 {
				t.Fatalf("status after install: %v %v", st.Drift, err)
			}
			argv := c.change(n)
			n.MustRun(argv[0], argv[1:]...)
			driftIsReportedAndRestored(ctx, t, eng, p, n, c.drift, clean)
			if got := n.MustRun("ip", "rule") + n.MustRun("ip", "-6", "rule") + n.MustRun("ip", "route", "show", "table", "all"); got != routes {
				t.Errorf("restored routes differ:\n%s\nwant\n%s", got, routes)
			}
		})
	}
}

// TestTProxyRoutesFollowThePlan: install writes the policy rule and local
// route of each family captured, a plan without TPROXY removes them, and
// so does uninstall.
func TestTProxyRoutesFollowThePlan(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	testenv.RequireBinary(t, "ip")
	ctx := context.Background()
	plans := scenarios(t)
	n := testenv.NewNetns(t, "nfttproute")
	eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
	has := func(fam string) bool {
		return strings.Contains(n.MustRun("ip", fam, "rule"), "fwmark 0x77 lookup 133") &&
			strings.Contains(n.MustRun("ip", fam, "route", "show", "table", "133"), "local default dev lo")
	}
	if err := eng.Install(ctx, plans["vnet-tproxy"]); err != nil {
		t.Fatal(err)
	}
	if !has("-4") || !has("-6") {
		t.Fatalf("after a TPROXY install:\n%s%s", n.MustRun("ip", "rule"), n.MustRun("ip", "-6", "rule"))
	}
	if err := eng.Install(ctx, plans["vnet"]); err != nil {
		t.Fatal(err)
	}
	if has("-4") || has("-6") {
		t.Errorf("a plan without TPROXY kept its routes:\n%s%s", n.MustRun("ip", "rule"), n.MustRun("ip", "-6", "rule"))
	}
	if err := eng.Install(ctx, plans["vnet-tproxy"]); err != nil {
		t.Fatal(err)
	}
	if err := eng.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if has("-4") || has("-6") || strings.Contains(n.MustRun("ip", "rule"), "0x77") {
		t.Errorf("uninstall kept the routes:\n%s%s", n.MustRun("ip", "rule"), n.MustRun("ip", "-6", "rule"))
	}
}

// TestIncludeListChangeIsElementsOnly: an include-only list changing its
// contents (an IPv6 range added where the family had none) is an element
// change, and its result equals a fresh install.
func TestIncludeListChangeIsElementsOnly(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	p := scenarios(t)["include-ports-v4-cidrs"]
	q := p.Clone()
	q.IncludeOutboundCIDRs = append(q.IncludeOutboundCIDRs, netip.MustParsePrefix("fd00:10::/64"))
	q.IncludeOutboundPorts = append(q.IncludeOutboundPorts, redirect.PortRange{First: 8443, Last: 8443})
	elementChangeEqualsFreshInstall(context.Background(), t, p, q)
}

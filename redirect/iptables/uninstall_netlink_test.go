package iptables

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os/exec"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// otherRules puts rules and chains that are not shunt's into every table
// shunt uses, in both families: before shunt's jumps, in chains of their
// own, with comments of their own.
func otherRules(n *testenv.Netns) {
	for _, prog := range []string{"iptables-nft", "ip6tables-nft"} {
		n.MustRun(prog, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN")
		n.MustRun(prog, "-t", "nat", "-N", "OTHER_CHAIN")
		n.MustRun(prog, "-t", "nat", "-A", "OTHER_CHAIN", "-p", "udp", "-j", "RETURN")
		n.MustRun(prog, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "80", "-m", "comment", "--comment", "somebody else", "-j", "OTHER_CHAIN")
		n.MustRun(prog, "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT")
		n.MustRun(prog, "-t", "filter", "-A", "OUTPUT", "-p", "tcp", "--dport", "2223", "-m", "comment", "--comment", "managed", "-j", "ACCEPT")
		n.MustRun(prog, "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "4444", "-j", "ACCEPT")
		n.MustRun(prog, "-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "--dport", "5555", "-j", "MARK", "--set-mark", "7")
	}
}

// saves is what iptables-nft-save prints for both families, without its
// dated comment lines, and what nft lists.
func saves(t *testing.T, n *testenv.Netns) string {
	t.Helper()
	var b strings.Builder
	for _, prog := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
		for _, l := range strings.SplitAfter(n.MustRun(prog), "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(l)
			}
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		b.WriteString(withoutEmptyBaseChains(n.MustRun("nft", "list", "ruleset")))
	}
	return b.String()
}

// withoutEmptyBaseChains drops the base chains without rules from nft's
// listing: iptables-nft makes a built-in chain when a rule first goes into
// it, and leaves it when the last one goes, whoever removes it (iptables-nft
// itself, or shunt); iptables-nft-save prints every built-in chain anyway.
func withoutEmptyBaseChains(s string) string {
	lines := strings.SplitAfter(s, "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "chain ") && strings.HasSuffix(l, "{") && i+2 < len(lines) &&
			strings.HasPrefix(strings.TrimSpace(lines[i+1]), "type ") && strings.TrimSpace(lines[i+2]) == "}" {
			if len(out) > 0 && strings.TrimSpace(out[len(out)-1]) == "" {
				out = out[:len(out)-1]
			}
			i += 2
			continue
		}
		out = append(out, lines[i])
	}
	return strings.Join(out, "")
}

// debugLog is a logger whose debug records the test reads.
func debugLog() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

func installDefault(t *testing.T, eng *Engine) {
	t.Helper()
	p, err := redirect.NewConfig().Plan(redirect.OSHost{})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Install(context.Background(), p); err != nil {
		t.Fatal(err)
	}
}

// Uninstall of an iptables-nft install takes the netlink path and leaves
// every other rule and chain exactly as it was, in both families, whether
// the other rules were there before shunt's or came after them.
func TestUninstallOverNetlinkLeavesOtherRulesExactly(t *testing.T) {
	testenv.RequireBinary(t, "iptables-nft-restore")
	testenv.RequireBinary(t, "ip6tables-nft-restore")
	n := testenv.NewNetns(t, "nlun")
	otherRules(n)
	before := saves(t, n)
	log, buf := debugLog()
	eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir(), Logger: log})
	installDefault(t, eng)
	if rules := n.ShuntRules(); !strings.Contains(rules, "ip6tables-nft-save") || !strings.Contains(rules, "SHUNT_OUTPUT") {
		t.Fatalf("install left no rules of both families:\n%s", rules)
	}
	// Rules added after shunt's, on both sides of its jumps.
	for _, prog := range []string{"iptables-nft", "ip6tables-nft"} {
		n.MustRun(prog, "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "--dport", "7777", "-j", "RETURN")
		n.MustRun(prog, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7778", "-j", "RETURN")
	}
	if err := eng.Uninstall(context.Background()); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if !strings.Contains(buf.String(), "uninstalled over netlink") {
		t.Fatalf("uninstall did not take the netlink path:\n%s", buf.String())
	}
	if rules := n.ShuntRules(); rules != "" {
		t.Fatalf("left behind:\n%s", rules)
	}
	for _, prog := range []string{"iptables-nft", "ip6tables-nft"} {
		n.MustRun(prog, "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "--dport", "7777", "-j", "RETURN")
		n.MustRun(prog, "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "--dport", "7778", "-j", "RETURN")
	}
	if after := saves(t, n); after != before {
		t.Fatalf("rules not as before the install:\n%s\nwant:\n%s", after, before)
	}
}

// What the netlink path does not recognise as shunt's sends uninstall to
// the restore path, which removes it as before.
func TestUninstallFallsBackToRestoreOnAMismatch(t *testing.T) {
	testenv.RequireBinary(t, "iptables-nft-restore")
	n := testenv.NewNetns(t, "nlfb")
	otherRules(n)
	before := saves(t, n)
	log, buf := debugLog()
	eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir(), Logger: log})
	installDefault(t, eng)
	// A comment that starts with the marker: iptables-save's reader takes
	// the rule for shunt's, the netlink path does not.
	n.MustRun("iptables-nft", "-t", "filter", "-A", "OUTPUT", "-m", "comment", "--comment", Marker+" too", "-j", "SHUNT_PORT_GUARD")
	if err := eng.Uninstall(context.Background()); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if !strings.Contains(buf.String(), "uninstall over netlink not used") || !strings.Contains(buf.String(), "is not a jump of shunt") {
		t.Fatalf("uninstall did not fall back:\n%s", buf.String())
	}
	if rules := n.ShuntRules(); rules != "" {
		t.Fatalf("left behind:\n%s", rules)
	}
	if after := saves(t, n); after != before {
		t.Fatalf("rules not as before the install:\n%s\nwant:\n%s", after, before)
	}
}

// The netlink removal is one transaction: when the kernel refuses part of
// it (another rule still jumps to one of shunt's chains), or it finds
// something that is not shunt's, nothing of it is applied.
func TestNetlinkRemovalIsAllOrNothing(t *testing.T) {
	testenv.RequireBinary(t, "iptables-nft-restore")
	testenv.RequireBinary(t, "ip6tables-nft-restore")
	for name, tc := range map[string]struct {
		args     []string
		mismatch bool
	}{
		// Not seen before the batch: the kernel refuses to delete a
		// chain still jumped to.
		"other chain jumps to shunt's": {args: []string{"-t", "nat", "-A", "OTHER_REF", "-j", "SHUNT_OUTPUT"}},
		"unmarked jump to shunt's":     {args: []string{"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "1", "-j", "SHUNT_OUTPUT"}, mismatch: true},
		"marker with other text":       {args: []string{"-t", "filter", "-A", "OUTPUT", "-m", "comment", "--comment", Marker + " too", "-j", "SHUNT_PORT_GUARD"}, mismatch: true},
	} {
		t.Run(name, func(t *testing.T) {
			n := testenv.NewNetns(t, "nlao")
			otherRules(n)
			eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir()})
			installDefault(t, eng)
			// The failure is in IPv4's tables; the batch also deletes
			// IPv6's rules, and those of IPv4 it sent before: all
			// must stay.
			n.MustRun("iptables-nft", "-t", "nat", "-N", "OTHER_REF")
			n.MustRun("iptables-nft", tc.args...)
			before := saves(t, n)
			var err error
			if nerr := n.Do(func() error { _, err = uninstallNetlink(context.Background(), []family{ipv4, ipv6}); return nil }); nerr != nil {
				t.Fatal(nerr)
			}
			if err == nil {
				t.Fatal("netlink removal succeeded, want an error")
			}
			t.Logf("refused: %v", err)
			if got := errors.Is(err, errNetlinkMismatch); got != tc.mismatch {
				t.Fatalf("err = %v; mismatch = %v, want %v", err, got, tc.mismatch)
			}
			if after := saves(t, n); after != before {
				t.Fatalf("a refused removal changed the rules:\n%s\nwant:\n%s", after, before)
			}
		})
	}
}

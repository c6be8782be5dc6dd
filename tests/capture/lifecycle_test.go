package capture_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/iptables"
)

// normalizeSave strips what changes between two identical rulesets: the
// comment lines with dates, counters, and built-in tables that hold no rule
// (a legacy table, once used, stays listed after its rules are gone).
func normalizeSave(s string) string {
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	var tables []string
	var cur []string
	hasRule := false
	for _, line := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(line, "#") || line == "":
		case strings.HasPrefix(line, "*"):
			cur, hasRule = []string{line}, false
		case line == "COMMIT":
			cur = append(cur, line)
			if hasRule {
				tables = append(tables, strings.Join(cur, "\n"))
			}
		default:
			if strings.HasPrefix(line, "-A") || (strings.HasPrefix(line, ":") && !isBuiltin(line)) {
				hasRule = true
			}
			cur = append(cur, counters.ReplaceAllString(line, "[counters]"))
		}
	}
	return strings.Join(tables, "\n")
}

func isBuiltin(chainLine string) bool {
	name := strings.Fields(chainLine[1:])[0]
	switch name {
	case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
		return !strings.Contains(chainLine, " DROP ")
	}
	return false
}

// foreignRules puts rules shunt did not write into the pod, in both
// families, in the tables shunt uses.
func foreignRules(t *testing.T, w *world) {
	t.Helper()
	for _, prog := range []string{"iptables-" + w.backend, "ip6tables-" + w.backend} {
		w.pod.MustRun(prog, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN")
		w.pod.MustRun(prog, "-t", "nat", "-N", "OTHER_CHAIN")
		w.pod.MustRun(prog, "-t", "nat", "-A", "OTHER_CHAIN", "-p", "udp", "-j", "RETURN")
		w.pod.MustRun(prog, "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT")
		w.pod.MustRun(prog, "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "4444", "-j", "ACCEPT")
	}
}

func TestUninstallRestoresTheRulesetAndKeepsForeignRules(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			foreignRules(t, w)
			before4, before6 := w.save(false), w.save(true)

			w.install("--exclude-outbound-ports", "22", "--exclude-inbound-ports", "8443")
			mid4 := w.save(false)
			if !strings.Contains(mid4, "OTHER_CHAIN") || !strings.Contains(mid4, "--dport 9999") {
				t.Fatalf("install removed foreign rules:\n%s", mid4)
			}
			if !strings.Contains(mid4, "SHUNT_OUTPUT") {
				t.Fatalf("install did not add shunt's chains:\n%s", mid4)
			}
			// Installing the same plan again changes nothing.
			w.install("--exclude-outbound-ports", "22", "--exclude-inbound-ports", "8443")
			if again := w.save(false); normalizeSave(again) != normalizeSave(mid4) {
				t.Errorf("second install changed the ruleset:\nfirst:\n%s\nsecond:\n%s", mid4, again)
			}

			if out, err := w.shunt("uninstall"); err != nil {
				t.Fatalf("uninstall: %v\n%s", err, out)
			}
			after4, after6 := w.save(false), w.save(true)
			if normalizeSave(after4) != normalizeSave(before4) {
				t.Errorf("IPv4 ruleset after uninstall differs:\nbefore:\n%s\nafter:\n%s", before4, after4)
			}
			if normalizeSave(after6) != normalizeSave(before6) {
				t.Errorf("IPv6 ruleset after uninstall differs:\nbefore:\n%s\nafter:\n%s", before6, after6)
			}
			if _, err := os.Stat(filepath.Join(w.stateDir, "capture.json")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("uninstall left the state file: %v", err)
			}
		})
	}
}

func TestChangedPlanReplacesRules(t *testing.T) {
	w := newWorld(t, "nft")
	w.install("--outbound-port", "15001")
	w.install("--outbound-port", "16001", "--redirect-all-dns")
	save := w.save(false)
	if strings.Contains(save, "--to-ports 15001") || !strings.Contains(save, "--to-ports 16001") {
		t.Errorf("the old plan's rules survived:\n%s", save)
	}
	if n := strings.Count(save, "-j SHUNT_OUTPUT"); n != 1 {
		t.Errorf("%d jumps to SHUNT_OUTPUT, want 1:\n%s", n, save)
	}
	if strings.Contains(save, "-d 10.1.0.2/32 -p udp") {
		t.Errorf("per-resolver DNS rules survived a switch to redirectAllDNS:\n%s", save)
	}
}

func TestStatusDetectsDriftAndExplainWarns(t *testing.T) {
	w := newWorld(t, "nft")
	if _, err := w.shunt("status"); exitCode(err) != 4 {
		t.Fatalf("status before install: exit %d, want 4", exitCode(err))
	}
	w.install()
	out, err := w.shunt("status")
	if exitCode(err) != 0 {
		t.Fatalf("status after install: exit %d, want 0\n%s", exitCode(err), out)
	}
	for _, want := range []string{"engine:  iptables", "backend: nft", "SHUNT_OUTPUT", "pkts", "/etc/netns/"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out, _ = w.shunt("explain", "--dst", "10.1.0.2:443")
	if !strings.Contains(out, "redirected to port 15001") || strings.Contains(out, "WARNING") {
		t.Errorf("explain before drift:\n%s", out)
	}

	// Someone flushes shunt's outbound chain.
	w.pod.MustRun("iptables-nft", "-t", "nat", "-F", "SHUNT_OUTPUT")
	out, err = w.shunt("status")
	if exitCode(err) != 3 || !strings.Contains(out, "DRIFT") || !strings.Contains(out, "missing") {
		t.Errorf("status after a flush: exit %d, want 3 with the missing rules\n%s", exitCode(err), out)
	}
	out, _ = w.shunt("explain", "--dst", "10.1.0.2:443")
	if !strings.Contains(out, "WARNING") {
		t.Errorf("explain did not warn about drift:\n%s", out)
	}
	// Installing again repairs it.
	w.install()
	if out, err := w.shunt("status"); exitCode(err) != 0 {
		t.Errorf("status after repair: exit %d\n%s", exitCode(err), out)
	}
}

func TestExplain(t *testing.T) {
	w := newWorld(t, "nft")
	w.install("--exclude-outbound-ports", "22", "--exclude-outbound-cidrs", "10.9.0.0/16")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--dst", "10.1.0.2:443"}, "redirected to port 15001"},
		{[]string{"--dst", "10.1.0.2:22"}, "excludeOutboundPorts"},
		{[]string{"--dst", "10.9.1.1:443"}, "excludeOutboundCidrs"},
		{[]string{"--dst", "10.1.0.2:443", "--uid", "5678"}, "proxyUID"},
		{[]string{"--dst", "10.1.0.2:53", "--proto", "udp"}, "redirected to port 15053"},
		{[]string{"--dst", "10.1.0.3:53", "--proto", "udp"}, "pass"},
		{[]string{"--direction", "in", "--dst", "10.1.0.1:8080"}, "redirected to port 15006"},
	}
	for _, c := range cases {
		out, err := w.shunt(append([]string{"explain"}, c.args...)...)
		if err != nil || !strings.Contains(out, c.want) {
			t.Errorf("explain %v = %q, %v; want it to mention %q", c.args, out, err, c.want)
		}
	}
}

func TestAutoBackendPrefersTheOneHoldingRules(t *testing.T) {
	w := newWorld(t, "legacy")
	w.pod.MustRun("iptables-legacy", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT")
	out, err := exec.Command(bins.shunt, "install", "--netns", w.pod.Path(), "--state-dir", w.stateDir).CombinedOutput()
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = w.shunt("uninstall") })
	if !strings.Contains(w.save(false), "SHUNT_OUTPUT") {
		t.Errorf("auto did not pick legacy, the variant holding rules")
	}
	if strings.Contains(w.pod.MustRun("iptables-nft-save"), "SHUNT_") {
		t.Errorf("auto wrote rules with nft although legacy holds this namespace's rules")
	}
}

// failingRestore wraps the real ip6tables-restore of a backend in a script
// that fails, so that the IPv6 half of an install fails after the IPv4 half
// succeeded.
func failingRestore(t *testing.T, backend string) func(b iptables.Backend, v6 bool) iptables.Commands {
	script := filepath.Join(t.TempDir(), "fail-restore")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncat >/dev/null\necho 'injected failure' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return func(b iptables.Backend, v6 bool) iptables.Commands {
		pre := "iptables"
		if v6 {
			pre = "ip6tables"
		}
		c := iptables.Commands{Save: pre + "-" + string(b) + "-save", Restore: pre + "-" + string(b) + "-restore", Iptables: pre + "-" + string(b)}
		if v6 {
			c.Restore = script
		}
		return c
	}
}

func TestFailedInstallLeavesThePreviousRules(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			foreignRules(t, w)
			w.install("--outbound-port", "15001")
			before4, before6 := w.save(false), w.save(true)

			cfg := redirect.NewConfig()
			for k, v := range map[string]string{"outboundPort": "16001", "netns": w.pod.Path(), "excludeOutboundPorts": "22,23"} {
				if err := cfg.Set(k, v, "test"); err != nil {
					t.Fatal(err)
				}
			}
			plan, err := cfg.Plan(redirect.OSHost{})
			if err != nil {
				t.Fatal(err)
			}
			eng := iptables.New(iptables.Options{NetnsPath: w.pod.Path(), StateDir: w.stateDir, Backend: backend, CommandsFor: failingRestore(t, backend)})
			err = eng.Install(context.Background(), plan)
			if err == nil || !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("install with a failing ip6tables-restore: err = %v, want the injected failure", err)
			}
			if after := w.save(false); normalizeSave(after) != normalizeSave(before4) {
				t.Errorf("IPv4 rules changed by a failed install:\nbefore:\n%s\nafter:\n%s", before4, after)
			}
			if after := w.save(true); normalizeSave(after) != normalizeSave(before6) {
				t.Errorf("IPv6 rules changed by a failed install:\nbefore:\n%s\nafter:\n%s", before6, after)
			}
			st, err := redirect.LoadState(w.stateDir)
			if err != nil || st == nil || st.Plan.OutboundPort != 15001 {
				t.Errorf("the recorded state no longer describes the installed plan: %+v, %v", st, err)
			}
		})
	}
}

func TestRacingInstallsLeaveOneConsistentRuleset(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			// Separate state directories, so the state lock does not
			// serialise them: the rules themselves must stay consistent.
			var wg sync.WaitGroup
			errs := make([]error, 6)
			outs := make([]string, 6)
			for i := range errs {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					port := fmt.Sprint(15001 + i%2*1000)
					b, err := exec.Command(bins.shunt, "install", "--netns", w.pod.Path(), "--state-dir", filepath.Join(w.stateDir, fmt.Sprint(i)),
						"--iptables-backend", backend, "--outbound-port", port).CombinedOutput()
					errs[i], outs[i] = err, string(b)
				}(i)
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("install %d: %v\n%s", i, err, outs[i])
				}
			}
			t.Cleanup(func() { _, _ = w.shunt("uninstall") })
			save := w.save(false)
			if n := strings.Count(save, "-j SHUNT_OUTPUT"); n != 1 {
				t.Errorf("%d jumps to SHUNT_OUTPUT, want 1:\n%s", n, save)
			}
			if n := strings.Count(save, "-j SHUNT_INBOUND\n"); n != 1 {
				t.Errorf("%d jumps to SHUNT_INBOUND, want 1:\n%s", n, save)
			}
			if n := strings.Count(save, "-A SHUNT_OUTBOUND_REDIRECT"); n != 1 {
				t.Errorf("%d rules in SHUNT_OUTBOUND_REDIRECT, want 1:\n%s", n, save)
			}
		})
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestIPv6IsSkippedWhereTheNamespaceHasNone(t *testing.T) {
	w := newWorld(t, "nft")
	w.pod.MustRun("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
	w.install()
	out, err := w.shunt("status")
	if err != nil || !strings.Contains(out, "ipv6: IPv6 is disabled in this namespace") {
		t.Errorf("status does not give the reason IPv6 was skipped: %v\n%s", err, out)
	}
	if save := w.save(true); strings.Contains(save, "SHUNT_") {
		t.Errorf("IPv6 rules installed although the namespace has IPv6 disabled:\n%s", save)
	}
	if !strings.Contains(w.save(false), "SHUNT_OUTPUT") {
		t.Errorf("IPv4 capture missing")
	}
}

func TestOriginalResolvConfIsKept(t *testing.T) {
	w := newWorld(t, "nft")
	w.install()
	want, err := os.ReadFile(filepath.Join("/etc/netns", w.pod.Name(), "resolv.conf"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(w.stateDir, redirect.ResolvConfFile))
	if err != nil || string(got) != string(want) {
		t.Errorf("state directory's resolv.conf = %q, %v; want the workload's %q", got, err, want)
	}
	if out, err := w.shunt("uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(w.stateDir, redirect.ResolvConfFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("uninstall left the saved resolv.conf: %v", err)
	}
}

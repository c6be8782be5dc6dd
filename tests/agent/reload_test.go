package agent_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// SIGHUP re-reads the config file and applies it without a restart: the
// capture rules change, DNS keeps answering.
func TestSIGHUPReloadsTheConfigFile(t *testing.T) {
	w := newWorld(t)
	w.writeResource("services.yaml", externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
	cfg := filepath.Join(w.dir, "capture.yaml")
	must(t, os.WriteFile(cfg, []byte("excludeOutboundPorts: [2222]\n"), 0o644))
	w.startAgent("", "--config", cfg)
	vip := w.dig("httpbin.mesh")
	if vip == "" {
		t.Fatalf("httpbin.mesh not resolved\n%s", w.logs())
	}
	rules := func() string { return w.pod.MustRun("iptables-save", "-t", "nat") }
	if !strings.Contains(rules(), "--dports 2222") {
		t.Fatalf("the config file's exclusion is not installed:\n%s", rules())
	}

	must(t, os.WriteFile(cfg, []byte("excludeOutboundPorts: [3333]\n"), 0o644))
	must(t, w.agent.Cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, "the reloaded exclusion", func() bool {
		r := rules()
		return strings.Contains(r, "--dports 3333") && !strings.Contains(r, "--dports 2222")
	}, w.logs)
	if w.agent.Exited() {
		t.Fatalf("the agent exited on SIGHUP:\n%s", w.logs())
	}
	if got := w.dig("httpbin.mesh"); got != vip {
		t.Errorf("after the reload httpbin.mesh = %q, want %s", got, vip)
	}

	// A broken file is refused and the running configuration stays.
	must(t, os.WriteFile(cfg, []byte("excludeOutboundPorts: [99999]\n"), 0o644))
	must(t, w.agent.Cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, "the refusal in the log", func() bool { return strings.Contains(w.agent.Output(), "99999") }, w.logs)
	if r := rules(); !strings.Contains(r, "--dports 3333") {
		t.Errorf("a refused reload changed the rules:\n%s", r)
	}
	if w.agent.Exited() {
		t.Fatalf("the agent exited on a bad reload:\n%s", w.logs())
	}
}

package engines

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
)

func TestAutoChoice(t *testing.T) {
	empty, withIpt := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(withIpt, "iptables-nft-restore"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path, cgroup, engine, reason string
	}{
		{"no cgroup, no iptables", empty, "", "nftables", "no iptables programs in PATH"},
		{"no cgroup, iptables installed", withIpt, "", "iptables", "iptables-nft-restore is installed"},
		{"cgroup eBPF cannot use", empty, t.TempDir(), "nftables", "not eBPF"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("PATH", c.path)
			cfg := redirect.NewConfig()
			_ = cfg.Set("engine", "auto", "test")
			_ = cfg.Set("stateDir", t.TempDir(), "test")
			if c.cgroup != "" {
				_ = cfg.Set("cgroup", c.cgroup, "test")
			}
			eng, ch, err := New(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if eng.Name() != c.engine || ch.Engine != c.engine || !strings.Contains(ch.Reason, c.reason) {
				t.Errorf("auto chose %s (%q), want %s because %q", eng.Name(), ch.Reason, c.engine, c.reason)
			}
		})
	}
}

func TestUnknownEngineIsRefused(t *testing.T) {
	cfg := redirect.NewConfig()
	_ = cfg.Set("engine", "pf", "test")
	if _, _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), `engine: invalid value "pf"`) {
		t.Errorf("engine pf: %v", err)
	}
}

// The wrapper exposes the engines' optional features by their named
// interfaces.
var (
	_ redirect.UninstallRenderer = (*Engine)(nil)
	_ redirect.ListenerSyncer    = (*Engine)(nil)
)

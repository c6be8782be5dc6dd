package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
)

// TestSystemdUnitVerifies runs systemd-analyze verify on the unit, with
// the shunt binary built where the unit expects it (verify checks that the
// commands exist).
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze not found; `make deps` installs the systemd package")
		}
		t.Skip("systemd-analyze not found: install the systemd package")
	}
	unit, err := os.ReadFile("systemd/shunt.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ExecStopPost=/usr/local/bin/shunt uninstall", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_CHOWN\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
		"EnvironmentFile=-/etc/default/shunt",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "shunt")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/shunt-dev/shunt/cmd/shunt").CombinedOutput(); err != nil {
		t.Fatalf("build shunt: %v\n%s", err, out)
	}
	path := filepath.Join(dir, "shunt.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/shunt", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, analyze, "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "shunt.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The example environment file must only hold variables shunt accepts.
func TestEnvironmentFileIsAccepted(t *testing.T) {
	b, err := os.ReadFile("systemd/shunt.env")
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		env = append(env, l)
	}
	cfg := redirect.NewConfig()
	if err := cfg.LoadEnv(env); err != nil {
		t.Errorf("shunt refuses the example environment: %v", err)
	}
}

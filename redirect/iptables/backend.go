package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Backend is the iptables variant: the legacy x_tables interface or the
// nftables-based one. Both program the same kernel, but a namespace should
// be managed through one of them only, or rules become invisible to the
// other's tools.
type Backend string

const (
	Legacy Backend = "legacy"
	NFT    Backend = "nft"
)

// family is "ipv4" or "ipv6".
type family string

const (
	ipv4 family = "ipv4"
	ipv6 family = "ipv6"
)

func (f family) v6() bool { return f == ipv6 }

// Commands names the programs of one backend and family. Tests replace
// Restore to inject failures.
type Commands struct {
	Save    string
	Restore string
	// Iptables is the single-rule command, used with -v -S for
	// inspection.
	Iptables string
}

func defaultCommands(b Backend, f family) Commands {
	pre := "iptables"
	if f == ipv6 {
		pre = "ip6tables"
	}
	return Commands{
		Save:     fmt.Sprintf("%s-%s-save", pre, b),
		Restore:  fmt.Sprintf("%s-%s-restore", pre, b),
		Iptables: fmt.Sprintf("%s-%s", pre, b),
	}
}

// runner executes iptables programs. It is called on a thread that is
// already in the target network namespace.
type runner struct {
	// lockWait is how long iptables waits for the xtables lock.
	lockWait time.Duration
}

func (r runner) run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", &CommandError{Cmd: name, ExitCode: ee.ExitCode(), Stderr: msg}
		}
		return "", fmt.Errorf("run %s: %w", name, err)
	}
	return stdout.String(), nil
}

// CommandError is a failed iptables program, with what it printed.
type CommandError struct {
	Cmd      string
	ExitCode int
	Stderr   string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%s exited with status %d: %s", e.Cmd, e.ExitCode, e.Stderr)
}

// transient reports whether retrying may help: the xtables lock was busy, or
// another writer changed the rules between our read and our write.
func (e *CommandError) transient() bool {
	s := strings.ToLower(e.Stderr)
	return e.ExitCode == 4 || strings.Contains(s, "resource temporarily unavailable") ||
		strings.Contains(s, "another app is currently holding the xtables lock") ||
		strings.Contains(s, "does a matching rule exist") || strings.Contains(s, "bad rule") ||
		strings.Contains(s, "no chain/target/match by that name")
}

func (r runner) save(ctx context.Context, c Commands) (string, error) {
	return r.run(ctx, "", c.Save)
}

func (r runner) restore(ctx context.Context, c Commands, input string) error {
	secs := int(r.lockWait / time.Second)
	if secs < 1 {
		secs = 1
	}
	_, err := r.run(ctx, input, c.Restore, "--noflush", "--wait", fmt.Sprint(secs))
	return err
}

// available reports whether a backend's programs exist.
func available(c Commands) bool {
	_, err1 := exec.LookPath(c.Save)
	_, err2 := exec.LookPath(c.Restore)
	return err1 == nil && err2 == nil
}

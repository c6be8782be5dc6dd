package capture_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Another program (kube-proxy) holding the xtables lock does not make an
// install fail: each iptables-restore waits xtablesLockWait for it and the
// change is retried xtablesRetries times. The lock is a private file
// (XTABLES_LOCKFILE), so holding it blocks nothing else on the machine.
func TestInstallWaitsForTheXtablesLock(t *testing.T) {
	w := newWorld(t, "legacy") // the nft variant takes no xtables lock
	lockFile := filepath.Join(t.TempDir(), "xtables.lock")
	env := append(os.Environ(), "XTABLES_LOCKFILE="+lockFile)
	release := holdLock(t, lockFile)

	// Held for longer than one wait: the first attempt times out, a retry
	// gets through.
	go func() { time.Sleep(2500 * time.Millisecond); release() }()
	start := time.Now()
	out, err := w.shuntEnv(env, "install", "--xtables-lock-wait", "1s", "--xtables-retries", "5")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("install while the lock was held for 2.5s: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = w.shuntEnv(env, "uninstall") })
	if took < 2*time.Second {
		t.Errorf("install took %v: it did not wait for the lock", took)
	}
	if save := w.save(false); !strings.Contains(save, "SHUNT_OUTPUT") {
		t.Errorf("rules missing after the wait:\n%s", save)
	}

	// Held for longer than every attempt together: the install fails,
	// says why, within its bound, and changes nothing.
	before4, before6 := w.save(false), w.save(true)
	release = holdLock(t, lockFile)
	defer release()
	start = time.Now()
	out, err = w.shuntEnv(env, "install", "--exclude-outbound-ports", "22", "--xtables-lock-wait", "1", "--xtables-retries", "1")
	took = time.Since(start)
	if err == nil {
		t.Fatalf("install succeeded while the lock was held:\n%s", out)
	}
	t.Logf("install with the lock held: %s", out)
	if !strings.Contains(out, "xtables lock") || !strings.Contains(out, "after 2 attempts") {
		t.Errorf("the error does not say the lock was busy:\n%s", out)
	}
	if took > 10*time.Second {
		t.Errorf("install gave up after %v; want about 2s (2 attempts of 1s)", took)
	}
	if normalizeSave(w.save(false)) != normalizeSave(before4) || normalizeSave(w.save(true)) != normalizeSave(before6) {
		t.Errorf("a failed install changed the rules")
	}
}

// holdLock takes the lock iptables takes, on file, as another program
// would, and returns its release.
func holdLock(t *testing.T, file string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { f.Close() }) }
	t.Cleanup(release)
	return release
}

// shuntEnv is shunt with a given environment.
func (w *world) shuntEnv(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{args[0], "--netns", w.pod.Path(), "--state-dir", w.stateDir}, args[1:]...)
	if args[0] == "install" {
		full = append(full, "--iptables-backend", w.backend)
	}
	cmd := exec.CommandContext(ctx, bins.shunt, full...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

package redirect

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

const stateFile = "capture.json"

// State is what an engine records after a successful install, so that
// status, explain and uninstall know what was done without guessing.
type State struct {
	Engine  string `json:"engine"`
	Backend string `json:"backend,omitempty"`
	Netns   string `json:"netns,omitempty"`
	Plan    *Plan  `json:"plan"`
	// Families that were installed ("ipv4", "ipv6") and, for the record,
	// why one was skipped.
	Families []string `json:"families"`
	Skipped  []string `json:"skipped,omitempty"`
	// Applied holds, per family, the engine's own rules as read back from
	// the kernel right after install: the reference for drift detection.
	Applied     map[string]string `json:"applied,omitempty"`
	InstalledAt time.Time         `json:"installedAt"`
}

// LoadState reads the recorded state; (nil, nil) when nothing is installed.
func LoadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse state %s: %w", filepath.Join(dir, stateFile), err)
	}
	return &s, nil
}

// SaveState writes the state atomically (write then rename), so a crash
// never leaves a torn file.
func SaveState(dir string, s *State) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".capture-*.json")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// RemoveState forgets the installation.
func RemoveState(dir string) error {
	err := os.Remove(filepath.Join(dir, stateFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

// LockState takes an exclusive lock on the state directory, so that two
// shunt processes changing one namespace's capture run one after the other.
// The returned function releases it.
func LockState(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state dir %s: %w", dir, err)
	}
	return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

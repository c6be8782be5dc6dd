package xdsclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/shunt-dev/shunt/mesh"
)

// SnapshotFile is the name of the persisted snapshot inside StateDir.
const SnapshotFile = "agent-snapshot.json"

// LoadPersisted reads the snapshot persisted in stateDir. No file is no
// snapshot: (nil, nil).
func LoadPersisted(stateDir string) (*mesh.AgentSnapshot, error) {
	p := filepath.Join(stateDir, SnapshotFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read persisted snapshot: %w", err)
	}
	var s mesh.AgentSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode persisted snapshot %s: %w", p, err)
	}
	if s.Names == nil {
		s.Names = map[string][]netip.Addr{}
	}
	return &s, nil
}

// persist writes snap to stateDir atomically: a reader (or a restarted
// agent) sees the old file or the new one, never half of one.
func persist(stateDir string, snap *mesh.AgentSnapshot) error {
	b, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	f, err := os.CreateTemp(stateDir, SnapshotFile+".*.tmp")
	if err != nil {
		return fmt.Errorf("create temporary snapshot file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	// Sync before rename, or a crash can leave the new name with no data.
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(stateDir, SnapshotFile)); err != nil {
		return fmt.Errorf("rename snapshot into place: %w", err)
	}
	if d, err := os.Open(stateDir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

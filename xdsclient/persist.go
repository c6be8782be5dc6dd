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

package controlplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/shunt-dev/shunt/mesh"
)

// stateFile keeps the VIP assignment across restarts, so that a name keeps
// its VIP for as long as it exists even when names are added that would
// have hashed onto it.
const stateFile = "vips.json"

type vipState struct {
	Version int `json:"version"`
	mesh.VIPs
}

func loadVIPs(dir string) (mesh.VIPs, error) {
	if dir == "" {
		return mesh.VIPs{}, nil
	}
	p := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return mesh.VIPs{}, nil
	}
	if err != nil {
		return mesh.VIPs{}, fmt.Errorf("read VIP state %s: %w", p, err)
	}
	var st vipState
	if err := json.Unmarshal(b, &st); err != nil {
		// Starting over would move every VIP under running workloads; an
		// operator must decide to delete the file.
		return mesh.VIPs{}, fmt.Errorf("parse VIP state %s (delete it to reassign every VIP): %w", p, err)
	}
	if st.Version != 1 {
		return mesh.VIPs{}, fmt.Errorf("VIP state %s: unknown version %d", p, st.Version)
	}
	return st.VIPs, nil
}

// saveVIPs replaces the state file atomically, so that a crash leaves the
// old or the new assignment, never half of one.
func saveVIPs(dir string, v mesh.VIPs) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	b, err := json.MarshalIndent(vipState{Version: 1, VIPs: v}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode VIP state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+stateFile+".*")
	if err != nil {
		return fmt.Errorf("write VIP state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write VIP state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync VIP state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write VIP state %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("replace VIP state: %w", err)
	}
	return nil
}

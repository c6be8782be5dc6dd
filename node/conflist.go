package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// PluginType is the shunt plugin's "type" in a conflist: the name of its
// binary in the CNI bin directory.
const PluginType = "shunt-cni"

// ErrNoConflist means the node's primary CNI has not written its
// configuration yet; the agent waits for it.
var ErrNoConflist = errors.New("no .conflist in the CNI configuration directory yet")

// FirstConflist returns the .conflist the runtime uses: the first by name.
func FirstConflist(confDir string) (string, error) {
	m, err := filepath.Glob(filepath.Join(confDir, "*.conflist"))
	if err != nil {
		return "", err
	}
	if len(m) == 0 {
		return "", ErrNoConflist
	}
	sort.Strings(m)
	return m[0], nil
}

// Chain appends the shunt plugin to the node's first conflist, or updates
// it in place when already there, and reports whether it changed the file.
// Whenever it finds the file without its entry it keeps that file in
// backupDir first, so Unchain can give the node back exactly what the
// primary CNI last wrote.
func Chain(confDir, backupDir string, plugin map[string]any) (string, bool, error) {
	path, err := FirstConflist(confDir)
	if err != nil {
		return "", false, err
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		return path, false, fmt.Errorf("read %s: %w", path, err)
	}
	var conf map[string]any
	if err := json.Unmarshal(orig, &conf); err != nil {
		return path, false, fmt.Errorf("parse %s: %w", path, err)
	}
	plugins, ok := conf["plugins"].([]any)
	if !ok {
		return path, false, fmt.Errorf("%s: no plugins list", path)
	}
	entry := map[string]any{}
	for k, v := range plugin {
		entry[k] = v
	}
	entry["type"] = PluginType
	placed := false
	for i, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
			plugins[i], placed = entry, true
		}
	}
	if !placed {
		plugins = append(plugins, entry)
	}
	conf["plugins"] = plugins
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return path, false, err
	}
	out = append(out, '\n')
	if bytes.Equal(out, orig) {
		return path, false, nil
	}
	backup := filepath.Join(backupDir, filepath.Base(path))
	// A file without shunt's entry is the primary CNI's latest: it replaces
	// any older backup, or removal would give back a configuration the
	// primary CNI has since replaced.
	if !placed {
		if err := writeAtomic(backup, orig, 0o644); err != nil {
			return path, false, fmt.Errorf("back up %s: %w", path, err)
		}
	}
	if err := writeAtomic(path, out, 0o644); err != nil {
		return path, false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := writeAtomic(backup+".written", out, 0o644); err != nil {
		return path, true, fmt.Errorf("record %s: %w", path, err)
	}
	return path, true, nil
}

// Unchain takes the shunt plugin out of every conflist it was chained into.
// A file still as shunt wrote it gets its backup back byte for byte; one
// that the primary CNI rewrote since keeps that rewrite, minus shunt's entry.
func Unchain(confDir, backupDir string) error {
	backups, err := filepath.Glob(filepath.Join(backupDir, "*.conflist"))
	if err != nil {
		return err
	}
	var errs []error
	for _, b := range backups {
		path := filepath.Join(confDir, filepath.Base(b))
		if err := unchainOne(path, b); err != nil {
			errs = append(errs, err)
			continue
		}
		_ = os.Remove(b)
		_ = os.Remove(b + ".written")
	}
	// A conflist chained without a backup (written by an older agent, or
	// the backup lost): remove the entry all the same.
	if p, err := FirstConflist(confDir); err == nil {
		if err := removeEntry(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func unchainOne(path, backup string) error {
	cur, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the primary CNI removed its configuration: nothing to restore into
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	written, _ := os.ReadFile(backup + ".written")
	if bytes.Equal(cur, written) {
		orig, err := os.ReadFile(backup)
		if err != nil {
			return fmt.Errorf("read backup of %s: %w", path, err)
		}
		if err := writeAtomic(path, orig, 0o644); err != nil {
			return fmt.Errorf("restore %s: %w", path, err)
		}
		return nil
	}
	return removeEntry(path)
}

func removeEntry(path string) error {
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var conf map[string]any
	if err := json.Unmarshal(cur, &conf); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	plugins, _ := conf["plugins"].([]any)
	kept := plugins[:0]
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
			continue
		}
		kept = append(kept, p)
	}
	if len(kept) == len(plugins) {
		return nil
	}
	conf["plugins"] = kept
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, append(out, '\n'), 0o644)
}

// InstallBinary copies src into binDir as shunt-cni atomically: a runtime
// executing the plugin meanwhile sees the old binary or the new, never a
// partial one.
func InstallBinary(src, binDir string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer in.Close()
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", binDir, err)
	}
	tmp, err := os.CreateTemp(binDir, ".shunt-cni-*")
	if err != nil {
		return fmt.Errorf("install plugin: %w", err)
	}
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("install plugin: %w", err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("install plugin: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("install plugin: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(binDir, PluginType)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("install plugin: %w", err)
	}
	return nil
}

// writeAtomic writes through a temporary file whose name the runtime does
// not load (it reads only .conf, .conflist and .json).
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".shunt-"+strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))+"-*.tmp")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

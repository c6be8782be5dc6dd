package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/shunt-dev/shunt/mesh"
)

// statFingerprint summarises the resource files' names, sizes and
// modification times. Polling compares it every tick; contents are read only
// when it changes, so an idle directory of thousands of resources costs a
// few stat calls per tick.
func statFingerprint(dir string) (string, error) {
	paths, err := resourcePaths(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("stat %s: %w", p, err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00", p, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// readResources reads every resource file of dir and returns them with a
// hash of their names and contents.
func readResources(dir string) ([]mesh.File, string, error) {
	paths, err := resourcePaths(dir)
	if err != nil {
		return nil, "", err
	}
	h := sha256.New()
	files := make([]mesh.File, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, "", fmt.Errorf("read resources %s: %w", p, err)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			rel = p
		}
		files = append(files, mesh.File{Name: filepath.Join(filepath.Base(dir), rel), Data: b})
		h.Write([]byte(rel + "\x00" + strconv.Itoa(len(b)) + "\x00"))
		h.Write(b)
	}
	return files, hex.EncodeToString(h.Sum(nil)), nil
}

// resourcePaths lists *.yaml and *.yml files under dir, sorted. Hidden
// entries are skipped: editors' swap files, and the "..data" directories of
// Kubernetes ConfigMap volumes, whose files are reached through the
// symbolic links beside them.
func resourcePaths(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if p != dir && strings.HasPrefix(name, ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		ext := filepath.Ext(name)
		if ext != ".yaml" && ext != ".yml" {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			fi, err := os.Stat(p)
			if err != nil || !fi.Mode().IsRegular() {
				return nil
			}
		} else if !d.Type().IsRegular() {
			return nil
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list resources in %s: %w", dir, err)
	}
	slices.Sort(out)
	return out, nil
}

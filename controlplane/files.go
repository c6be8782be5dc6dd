package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/shunt-dev/shunt/mesh"
)

// fileStat is what tells a file changed without reading it: size,
// modification and change times, and the inode, which a rename-over (the
// atomic way to write a resource file) always changes.
type fileStat struct {
	size         int64
	mtime, ctime int64
	ino          uint64
}

func statOf(fi os.FileInfo) fileStat {
	st := fileStat{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ctime = sys.Ctim.Nano()
		st.ino = sys.Ino
	}
	return st
}

// cachedFile is one resource file as last read: its contents' hash and the
// parse of those contents.
type cachedFile struct {
	stat   fileStat
	sum    [sha256.Size]byte
	parsed *mesh.ParsedFile
}

// fileCache remembers the resource files between polls so that a change to
// one file of thousands costs the reading and parsing of that file alone.
// It is used by one reload at a time.
type fileCache struct {
	files map[string]*cachedFile
	// reads counts files read, for tests.
	reads int
}

// scan stats the resource files of dir and tells whether any was added,
// removed or changed since the last load; stats are returned for load.
func (c *fileCache) scan(dir string) (paths []string, stats []fileStat, changed bool, err error) {
	paths, err = resourcePaths(dir)
	if err != nil {
		return nil, nil, false, err
	}
	stats = make([]fileStat, len(paths))
	changed = len(paths) != len(c.files)
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, nil, false, fmt.Errorf("stat %s: %w", p, err)
		}
		stats[i] = statOf(fi)
		if f, ok := c.files[p]; !ok || f.stat != stats[i] {
			changed = true
		}
	}
	return paths, stats, changed, nil
}

// load returns the parsed resource files of dir with a hash of their names
// and contents. Files whose stat is unchanged are not read again, unless
// reread is set; files whose contents are unchanged are not parsed again.
func (c *fileCache) load(dir string, paths []string, stats []fileStat, reread bool) ([]*mesh.ParsedFile, string, error) {
	next := make(map[string]*cachedFile, len(paths))
	out := make([]*mesh.ParsedFile, 0, len(paths))
	h := sha256.New()
	for i, p := range paths {
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			rel = p
		}
		f, ok := c.files[p]
		if !ok || reread || f.stat != stats[i] {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, "", fmt.Errorf("read resources %s: %w", p, err)
			}
			c.reads++
			sum := sha256.Sum256(b)
			if !ok || f.sum != sum {
				f = &cachedFile{sum: sum, parsed: mesh.Parse(mesh.File{Name: filepath.Join(filepath.Base(dir), rel), Data: b})}
			} else {
				f = &cachedFile{sum: sum, parsed: f.parsed}
			}
			f.stat = stats[i]
		}
		next[p] = f
		out = append(out, f.parsed)
		h.Write([]byte(rel + "\x00"))
		h.Write(f.sum[:])
	}
	c.files = next
	return out, hex.EncodeToString(h.Sum(nil)), nil
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

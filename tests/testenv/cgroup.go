package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cgroup2Mount returns where the cgroup-v2 hierarchy is mounted: the root
// /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// Fields: ... mount-point ... " - " fstype source options
		line := s.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		pre, post := strings.Fields(line[:sep]), strings.Fields(line[sep+3:])
		if len(pre) >= 5 && len(post) >= 1 && post[0] == "cgroup2" {
			return pre[4], nil
		}
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// NewCgroup creates a fresh cgroup-v2 subtree for one test and returns its
// path. Processes the test put there must be stopped before it ends (they
// are, when started with StartProcess, whose cleanups run first); the
// directory is then removed.
func NewCgroup(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Skipf("cgroup v2 is not mounted: %v", err)
	}
	dir := filepath.Join(mnt, UniqueName("shunt-test-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// A process may still be exiting; give the kernel a moment.
		var err error
		for i := 0; i < 50; i++ {
			if err = os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: %v", dir, err)
	})
	return dir
}

// JoinCgroup moves a process into the cgroup.
func JoinCgroup(dir string, pid int) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

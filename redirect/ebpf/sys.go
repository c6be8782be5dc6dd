package ebpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// cgroupID checks that dir is a cgroup-v2 directory and names it for the
// pin directory: its path below the cgroup2 mount, with every character
// bpffs or a shell would trip on replaced.
func cgroupID(dir string) (string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return "", fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", fmt.Errorf("cgroup %s is not a cgroup-v2 directory (the eBPF engine attaches to cgroup v2; on hybrid hosts it is mounted at /sys/fs/cgroup/unified)", dir)
	}
	return cgroupName(dir), nil
}

// cgroupName is cgroupID without the checks: it names a cgroup that may
// be gone already.
func cgroupName(dir string) string {
	rel := dir
	if mnt, err := cgroup2Mount(); err == nil {
		if r, err := filepath.Rel(mnt, dir); err == nil && !strings.HasPrefix(r, "..") {
			rel = r
		}
	}
	rel = strings.Trim(rel, "/")
	if rel == "" || rel == "." {
		rel = "root"
	}
	var b strings.Builder
	for _, r := range rel {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// cgroup2Mount finds the cgroup-v2 hierarchy: /sys/fs/cgroup on unified
// hosts, /sys/fs/cgroup/unified on hybrid ones.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
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
	if err := s.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// checkBPFFS makes sure pins land on a bpffs: the pin directory itself, or
// its nearest existing ancestor.
func checkBPFFS(pinDir string) error {
	dir := pinDir
	for {
		var fs unix.Statfs_t
		err := unix.Statfs(dir, &fs)
		if err == nil {
			if fs.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("pin directory %s is not on a bpffs (%s is not one); mount it first: mount -t bpf bpf /sys/fs/bpf", pinDir, dir)
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("pin directory %s: %w", pinDir, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return fmt.Errorf("pin directory %s: no existing ancestor", pinDir)
		}
		dir = parent
	}
}

func openNetns(path string) (int, error) {
	if path == "" {
		path = "/proc/self/ns/net"
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return fd, nil
}

// localAddrs lists the namespace's own addresses, loopback aside (the
// programs know loopback by itself).
func localAddrs(ctx context.Context, path string) ([]netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var h *netlink.Handle
	var err error
	if path == "" {
		h, err = netlink.NewHandle()
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(path)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", path, err)
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", orDefault(path, "current namespace"), err)
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses in %s: %w", orDefault(path, "current namespace"), err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}

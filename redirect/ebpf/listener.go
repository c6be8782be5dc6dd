package ebpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The sk_lookup program needs the proxy's inbound listening socket in a
// SOCKMAP. shunt does not own that socket, so it borrows it: it finds, among
// the processes in the workload's network namespace, the one holding a TCP
// socket listening on the inbound port (its inode is in that namespace's
// /proc/PID/net/tcp{,6}), duplicates the descriptor with pidfd_getfd(2), puts
// it in the map and closes the duplicate. The map holds a reference of its
// own; when the proxy closes the socket the kernel removes the entry, and the
// agent registers the new one (SyncListener).

// registerListener returns how many listening sockets (IPv4, IPv6) it put
// in the map.
func (e *Engine) registerListener(ctx context.Context, m *ebpf.Map, port uint16) (int, error) {
	return registerListener(ctx, e.log, e.netns, port, func(family uint32, sock int) error {
		return m.Update(family, uint64(sock), ebpf.UpdateAny)
	})
}

// registerListener finds the sockets listening on port in the namespace
// and hands each, with its family (0 IPv4, 1 IPv6), to put.
func registerListener(ctx context.Context, log *slog.Logger, netnsPath string, port uint16, put func(family uint32, sock int) error) (int, error) {
	nsPath := netnsPath
	if nsPath == "" {
		nsPath = "/proc/self/ns/net"
	}
	var nsStat unix.Stat_t
	if err := unix.Stat(nsPath, &nsStat); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	// The namespace's own tables first, read from a thread inside it:
	// when nothing listens (a pod being created), the search of every
	// process on the node for the socket's owner is not needed.
	inodes := map[uint64]uint32{} // socket inode → map key (0 IPv4, 1 IPv6)
	if err := inNetns(netnsPath, func() error {
		for key, table := range []string{"tcp", "tcp6"} {
			ino, err := listeningInodes(filepath.Join("/proc/thread-self/net", table), port)
			if err != nil {
				return err
			}
			for _, i := range ino {
				inodes[i] = uint32(key)
			}
		}
		return nil
	}); err != nil {
		return 0, err
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("no socket listens on TCP port %d", port)
	}
	pids, err := pidsInNetns(nsStat)
	if err != nil {
		return 0, err
	}
	if len(pids) == 0 {
		return 0, errors.New("no process runs in the network namespace")
	}
	done := map[uint32]bool{}
	for _, pid := range pids {
		if err := ctx.Err(); err != nil {
			return len(done), err
		}
		fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
		ents, err := os.ReadDir(fdDir)
		if err != nil {
			continue // the process exited
		}
		for _, ent := range ents {
			target, err := os.Readlink(filepath.Join(fdDir, ent.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64)
			if err != nil {
				continue
			}
			key, ok := inodes[ino]
			if !ok || done[key] {
				continue
			}
			fd, err := strconv.Atoi(ent.Name())
			if err != nil {
				continue
			}
			if err := putSocket(put, key, pid, fd); err != nil {
				return len(done), err
			}
			done[key] = true
			log.Info("inbound listener registered", "pid", pid, "fd", fd, "port", port, "ipv6", key == 1)
		}
	}
	if len(done) == 0 {
		return 0, fmt.Errorf("the socket listening on port %d belongs to no process visible here", port)
	}
	return len(done), nil
}

func putSocket(put func(uint32, int) error, key uint32, pid, fd int) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd %d/%d: %w", pid, fd, err)
	}
	defer unix.Close(dup)
	if err := put(key, dup); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			// Go, for one, listens with MPTCP by default.
			return fmt.Errorf("register listener of pid %d: the socket cannot go in the sk_lookup map (not plain TCP: MPTCP?), so inbound connections reach it through tc ingress steering only: %w", pid, err)
		}
		return fmt.Errorf("register listener of pid %d: %w", pid, err)
	}
	return nil
}

func pidsInNetns(ns unix.Stat_t) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", ent.Name(), "ns", "net"), &st) != nil {
			continue
		}
		if st.Ino == ns.Ino && st.Dev == ns.Dev {
			out = append(out, pid)
		}
	}
	return out, nil
}

// listeningInodes reads /proc/net/tcp{,6}: sockets in state 0A (LISTEN)
// whose local port is port.
func listeningInodes(path string, port uint16) ([]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []uint64
	s := bufio.NewScanner(f)
	s.Scan() // header
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 10 || fields[3] != "0A" {
			continue
		}
		_, hexPort, ok := strings.Cut(fields[1], ":")
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil || uint16(p) != port {
			continue
		}
		ino, err := strconv.ParseUint(fields[9], 10, 64)
		if err == nil && ino != 0 {
			out = append(out, ino)
		}
	}
	return out, s.Err()
}

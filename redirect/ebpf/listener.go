package ebpf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

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
	// The namespace's listening sockets first: when nothing listens (a
	// pod being created), the search of every process on the node for the
	// socket's owner is not needed.
	inodes, err := listeningSockets(netnsPath, port) // socket inode → map key (0 IPv4, 1 IPv6)
	if err != nil {
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

// listeningSockets asks the kernel (sock_diag, on a socket made inside the
// namespace) for the TCP sockets listening on port: their inodes, each with
// its sk_lookup map key (0 IPv4, 1 IPv6). A dump of listeners alone walks
// only the listening hash, where /proc/net/tcp walks every established
// connection of the machine too (milliseconds on a busy node).
func listeningSockets(netnsPath string, port uint16) (map[uint64]uint32, error) {
	var fd int
	if err := inNetns(netnsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		return err
	}); err != nil {
		return nil, fmt.Errorf("sock_diag socket in %s: %w", orDefault(netnsPath, "current namespace"), err)
	}
	defer unix.Close(fd)
	const tcpListen = 10
	out := map[uint64]uint32{}
	buf := make([]byte, 64<<10)
	for key, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		// struct nlmsghdr, then struct inet_diag_req_v2 (56 bytes).
		req := make([]byte, unix.NLMSG_HDRLEN+56)
		binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
		binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
		binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
		binary.NativeEndian.PutUint32(req[8:], uint32(key+1))
		req[16], req[17] = family, unix.IPPROTO_TCP
		binary.NativeEndian.PutUint32(req[20:], 1<<tcpListen)
		if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, fmt.Errorf("sock_diag request: %w", err)
		}
	recv:
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("sock_diag: %w", err)
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				return nil, fmt.Errorf("sock_diag: %w", err)
			}
			for _, m := range msgs {
				switch m.Header.Type {
				case unix.NLMSG_DONE:
					break recv
				case unix.NLMSG_ERROR:
					if family == unix.AF_INET6 {
						break recv // no IPv6 in this kernel
					}
					if len(m.Data) >= 4 {
						if e := -int32(binary.NativeEndian.Uint32(m.Data)); e > 0 {
							return nil, fmt.Errorf("sock_diag: %w", unix.Errno(e))
						}
					}
					break recv
				}
				// struct inet_diag_msg: state at 1, the source port
				// (network order) at 4, the inode at 68.
				d := m.Data
				if len(d) < 72 || d[1] != tcpListen || binary.BigEndian.Uint16(d[4:]) != port {
					continue
				}
				if ino := binary.NativeEndian.Uint32(d[68:]); ino != 0 {
					out[uint64(ino)] = uint32(key)
				}
			}
		}
	}
	return out, nil
}

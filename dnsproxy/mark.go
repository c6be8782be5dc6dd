package dnsproxy

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/wire"
)

// DefaultUpstreamMark is the socket mark the capture rules exempt, so that
// shunt's own upstream queries are not captured back into shunt. ("SH")
const DefaultUpstreamMark = wire.BypassMark

// markControl sets SO_MARK on a socket before it connects.
func markControl(mark uint32) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return fmt.Errorf("set SO_MARK on upstream socket: %w", err)
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK %#x on upstream socket: %w", mark, serr)
		}
		return nil
	}
}

// ErrMarkNotPermitted is returned by New when the upstream mark cannot be set.
var ErrMarkNotPermitted = errors.New("setting SO_MARK needs CAP_NET_ADMIN: run shunt dns as root or with CAP_NET_ADMIN, " +
	"or run it as the proxy's UID (exempted by the capture rules) with --upstream-mark 0")

// checkMark finds out at start, rather than on the first forwarded query,
// whether this process may mark its sockets.
func checkMark(mark uint32) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probe SO_MARK: create socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("upstream mark %#x: %w", mark, ErrMarkNotPermitted)
		}
		return fmt.Errorf("upstream mark %#x: set SO_MARK: %w", mark, err)
	}
	return nil
}

// udpListenControl lets several UDP sockets share one address, so that
// the kernel spreads queries over them (one reader per CPU). The receive
// buffer stays the system's default, as Unbound's does: a larger one (1 MiB
// was tried) kept a busy machine's stalls as queueing delay on every query
// behind them, and the fixed-rate p99 grew to 2-4x Unbound's, where the
// default sheds the excess in the kernel.
func udpListenControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

package xdsproxy

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// SocketName is the file name of the local proxy's ADS socket in shunt's
// state directory.
const SocketName = "xds.sock"

// SocketPath is where `shunt run` serves ADS to the local proxy: the
// address an Envoy bootstrap names as its ADS cluster's pipe.
func SocketPath(stateDir string) string { return filepath.Join(stateDir, SocketName) }

// maxSocketPath is what fits in sockaddr_un's sun_path with its NUL.
const maxSocketPath = 107

// Listen creates the Unix socket at path for the proxy: owned by uid:gid,
// mode 0660, and every connection's peer credentials (SO_PEERCRED) checked,
// so that only the proxy's UID, root and shunt's own UID are served even if
// the file's permissions or a passed descriptor would let another in. A
// stale socket at path is replaced; any other file there is an error.
func Listen(path string, uid, gid uint32, log *slog.Logger) (net.Listener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("xDS socket %s: path is %d bytes, longer than a Unix socket address allows (%d): choose a shorter --state-dir", path, len(path), maxSocketPath)
	}
	if log == nil {
		log = slog.Default()
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("xDS socket %s: a file that is not a socket is in the way", path)
		}
		// A socket someone still accepts on belongs to a running agent
		// (the same --state-dir twice): taking it over would cut that
		// agent's proxy off.
		if c, err := net.DialTimeout("unix", path, 500*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("xDS socket %s: another process is serving it (is another shunt run using this --state-dir?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("xDS socket %s: remove the stale socket: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("xDS socket %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("xDS socket: listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	// Between bind and chmod the file has the umask's mode; a peer that
	// connects in that window is still checked by its credentials.
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("xDS socket %s: chmod 0660: %w", path, err)
	}
	// chmod first: once the file is the proxy's, changing its mode would
	// take CAP_FOWNER; the chown takes CAP_CHOWN (in shunt's systemd unit).
	if err := os.Chown(path, int(uid), int(gid)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("xDS socket %s: give it to the proxy's user %d:%d: %w (shunt needs CAP_CHOWN; --xds-socket off if no local proxy subscribes)", path, uid, gid, err)
	}
	allowed := map[uint32]bool{uid: true, 0: true, uint32(os.Geteuid()): true}
	return &credListener{UnixListener: ln, allowed: allowed, log: log, slots: make(chan struct{}, MaxConnections)}, nil
}

// MaxConnections bounds the socket's open connections: Envoy holds one
// (two across a hot restart); a runaway client must not grow the agent,
// which also answers the pod's DNS.
const MaxConnections = 16

// credListener hands out only connections whose peer is an allowed UID.
type credListener struct {
	*net.UnixListener
	allowed map[uint32]bool
	log     *slog.Logger
	slots   chan struct{}

	mu         sync.Mutex
	refused    int
	lastLog    time.Time
	suppressed int
}

func (l *credListener) Accept() (net.Conn, error) {
	for {
		c, err := l.UnixListener.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		if err != nil || !l.allowed[cred.Uid] {
			c.Close()
			l.noteRefused(cred, err, "the peer is not the proxy's user or root")
			continue
		}
		select {
		case l.slots <- struct{}{}:
			return &slotConn{UnixConn: c, release: func() { <-l.slots }}, nil
		default:
			c.Close()
			l.noteRefused(cred, nil, "too many connections")
		}
	}
}

// slotConn gives its slot back when closed.
type slotConn struct {
	*net.UnixConn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.UnixConn.Close()
	c.once.Do(c.release)
	return err
}

// noteRefused logs a refused peer, at most once every 10 s: a process
// hammering the socket must not fill the log.
func (l *credListener) noteRefused(cred *unix.Ucred, err error, why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refused++
	if time.Since(l.lastLog) < 10*time.Second {
		l.suppressed++
		return
	}
	args := []any{"socket", l.Addr().String(), "reason", why, "refused_before", l.suppressed}
	if err != nil {
		args = append(args, "error", err)
	} else {
		args = append(args, "pid", cred.Pid, "uid", cred.Uid, "gid", cred.Gid)
	}
	l.log.Warn("refused a connection to the xDS socket", args...)
	l.lastLog, l.suppressed = time.Now(), 0
}

// Refused counts the connections refused so far.
func (l *credListener) Refused() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peer credentials: %w", credErr)
	}
	return cred, nil
}

package nftables

import (
	"fmt"
	"sync"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// socks keeps Install's two netlink sockets (the batch socket and the
// generation socket) from one change to the next. Closing a netfilter
// netlink socket right after a commit waits in the kernel for the
// commit's deferred clean-up, an RCU grace period: several milliseconds,
// more than the change itself. A long-lived engine (the agent's) keeps
// them; a one-shot process pays the close once, at exit.
type socks struct {
	mu sync.Mutex
	c  *nftables.Conn
	g  *genConn
	// dev and ino identify the namespace the sockets were made in: a
	// path such as /run/netns/NAME may later name another namespace.
	dev, ino uint64
}

// get returns the sockets for the namespace at path, opening them when
// none are kept or the path now names another namespace, and locks them
// until keep is called: keep(true) keeps them for the next change,
// keep(false) closes them.
func (s *socks) get(path string) (c *nftables.Conn, g *genConn, keep func(bool), err error) {
	dev, ino, err := netnsID(path)
	if err != nil {
		return nil, nil, nil, err
	}
	s.mu.Lock()
	if s.c != nil && (s.dev != dev || s.ino != ino) {
		s.closeLocked()
	}
	if s.c == nil {
		c, _, err := dial(path)
		if err != nil {
			s.mu.Unlock()
			return nil, nil, nil, err
		}
		g, err := dialGen(path)
		if err != nil {
			_ = c.CloseLasting()
			s.mu.Unlock()
			return nil, nil, nil, err
		}
		s.c, s.g, s.dev, s.ino = c, g, dev, ino
	}
	keep = func(ok bool) {
		if !ok {
			s.closeLocked()
		}
		s.mu.Unlock()
	}
	return s.c, s.g, keep, nil
}

// drop closes the kept sockets, if any.
func (s *socks) drop() {
	s.mu.Lock()
	s.closeLocked()
	s.mu.Unlock()
}

func (s *socks) closeLocked() {
	if s.c != nil {
		_ = s.c.CloseLasting()
	}
	s.g.Close()
	s.c, s.g = nil, nil
}

func netnsID(path string) (dev, ino uint64, err error) {
	if path == "" {
		path = "/proc/self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("netns %s: %w", path, err)
	}
	return st.Dev, st.Ino, nil
}

package controlplane

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// notifyDelay is how long a burst of file events may last before the
// directory is read: an editor or kubectl writes, renames and changes
// modes in a few steps, and reading between them would report a half
// change.
const notifyDelay = 20 * time.Millisecond

// dirNotifier wakes the watcher as soon as something changes under the
// resource directory (inotify), so that a change does not wait for the
// next poll. Polling stays as the safety net: events can be lost (queue
// overflow, directories created between a walk and a watch, file systems
// without inotify), a poll never is.
type dirNotifier struct {
	f   *os.File
	fd  int
	dir string
	// mu keeps a watch from being added to a closed (or reused)
	// descriptor.
	mu     sync.Mutex
	closed bool
	// C receives a value, coalesced, after events.
	C chan struct{}
}

const notifyMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_CLOSE_WRITE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

func newDirNotifier(dir string) (*dirNotifier, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	// A non-blocking descriptor goes through Go's poller, so Close ends a
	// pending Read.
	n := &dirNotifier{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, dir: dir, C: make(chan struct{}, 1)}
	if err := n.watchDirs(); err != nil {
		n.f.Close()
		return nil, err
	}
	go n.read()
	return n, nil
}

// watchDirs watches dir and its visible subdirectories; adding a watch that
// exists only refreshes it, so this runs again after events to cover new
// directories.
func (n *dirNotifier) watchDirs() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	// n.fd, not n.f.Fd(): Fd would make the descriptor blocking, and Close
	// could no longer end a Read.
	fd := n.fd
	return filepath.WalkDir(n.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == n.dir {
				return err
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		if p != n.dir && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if _, err := unix.InotifyAddWatch(fd, p, notifyMask); err != nil {
			return fmt.Errorf("inotify watch %s: %w", p, err)
		}
		return nil
	})
}

func (n *dirNotifier) read() {
	buf := make([]byte, 64<<10)
	for {
		if _, err := n.f.Read(buf); err != nil {
			// Closed, or failing: the poll carries on alone.
			return
		}
		// The events themselves do not matter: the directory is scanned.
		_ = n.watchDirs()
		select {
		case n.C <- struct{}{}:
		default:
		}
	}
}

func (n *dirNotifier) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	return n.f.Close()
}

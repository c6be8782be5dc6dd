package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A UDP socket's reader blocks in the kernel, in its own recvmmsg, on a
// thread of its own, instead of parking in the netpoller. Through the
// netpoller every wake-up costs two system calls (epoll_wait, then
// recvmmsg) and, at a few tens of thousands of queries a second, a
// datagram wakes an idle process nearly every time; blocked in recvmmsg
// it costs one. The calls go through syscall.Syscall6, so the runtime
// knows the thread is in a system call: it hands the P to other
// goroutines meanwhile and never waits for this thread to stop the world
// (never RawSyscall for a blocking call). The socket must not be in the
// netpoller, or the netpoller's thread would wake for every datagram too:
// the reader takes a duplicate of the socket's descriptor, in blocking
// mode, and closes the original (which takes it out of the netpoller).
//
// Shutdown: shutdown(SHUT_RD) wakes a receiver blocked on the socket (its
// recvmmsg returns at once from then on); answers in flight can still be
// sent. A receive timeout bounds the wait should the wake-up be missed.

// blockingRecvTimeout is the blocked receiver's longest wait before it
// looks at its context again (only matters if the shutdown wake-up is
// lost).
const blockingRecvTimeout = 1 // second

// takeBlocking takes uc's socket out of the netpoller: it returns a
// duplicate of its descriptor in blocking mode and closes uc. It returns
// -1 (and leaves uc as it was) when that cannot be done.
func takeBlocking(uc *net.UDPConn, rc syscall.RawConn) int {
	nfd := -1
	if err := rc.Control(func(fd uintptr) {
		d, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return
		}
		tv := unix.Timeval{Sec: blockingRecvTimeout}
		if unix.SetsockoptTimeval(d, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) != nil || unix.SetNonblock(d, false) != nil {
			unix.Close(d)
			return
		}
		nfd = d
	}); err != nil || nfd < 0 {
		return -1
	}
	// O_NONBLOCK belongs to the open file, which uc shares: uc's own
	// calls would now block in the kernel, but uc is closed here and
	// nothing uses it again.
	_ = uc.Close()
	return nfd
}

// serveBlocking is the reader's loop on its blocking socket; it returns
// when stop is done.
func (r *udpReader) serveBlocking() {
	// The thread sleeps in recvmmsg between datagrams; locked, the
	// goroutine wakes where it slept, without a hand-off between threads.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	wake := context.AfterFunc(r.stop, func() { _ = unix.Shutdown(r.fd, unix.SHUT_RD) })
	defer wake()
	for r.stop.Err() == nil {
		n, errno := r.own.recv(uintptr(r.fd), r.ownBufs, unix.MSG_WAITFORONE)
		if errno == syscall.EBADF {
			return
		}
		if errno != 0 || r.stop.Err() != nil {
			continue // EAGAIN: the receive timeout; or shut down
		}
		r.mu.Lock()
		r.answer(r.own, r.ownBufs, n)
		r.mu.Unlock()
	}
}

// sendBlocking sends messages 0 to n-1 on the blocking socket fd, waiting
// in the kernel when its buffer is full. A message the kernel refuses is
// skipped, not retried.
func (b *mmsgBatch) sendBlocking(fd int, n int) {
	for off := 0; off < n; {
		r, _, e := syscall.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[off])), uintptr(n-off), 0, 0, 0)
		switch e {
		case syscall.EINTR:
		case 0:
			off += max(int(r), 1)
		default:
			off++ // the client will retry this one
		}
	}
}

// sendTo sends one datagram on the blocking socket fd (the slow path's
// answers).
func sendTo(fd int, b []byte, to netip.AddrPort) {
	var sa unix.Sockaddr
	if to.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	}
	_ = unix.Sendto(fd, b, 0, sa) // a client whose answer is lost retries
}

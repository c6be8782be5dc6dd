package dnsproxy

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgBatch is a set of datagrams moved by one recvmmsg or sendmmsg call
// on a non-blocking socket (MSG_DONTWAIT: when there is nothing to read the
// reader parks in the netpoller as usual). It keeps the clients' addresses
// as raw bytes and sends answers back to them as they are, so a table
// answer allocates nothing (x/net's batches allocate a *net.UDPAddr per
// datagram).
//
// The calls go through syscall.Syscall6, with the runtime's system-call
// bookkeeping. syscall.RawSyscall6 skips it and, at 20,000 q/s, cut a
// table answer's CPU by 40 % (entering a system call wakes the runtime's
// sysmon thread whenever the process was idle), but in the same runs the
// p99 at a fixed rate on a loaded machine was 3-10x worse
// (docs/performance.md): the tail is worth more than the CPU.
type mmsgBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
}

func newMmsgBatch(n int) *mmsgBatch {
	b := &mmsgBatch{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
	}
	for i := range b.hdrs {
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
		b.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
	}
	return b
}

// set points message i at buf (to read into it or to send it).
func (b *mmsgBatch) set(i int, buf []byte) {
	b.iovs[i].Base = unsafe.SliceData(buf)
	b.iovs[i].SetLen(len(buf))
	b.hdrs[i].Hdr.Flags = 0
	b.hdrs[i].Len = 0
}

// datagram returns how many bytes message i received.
func (b *mmsgBatch) received(i int) int { return int(b.hdrs[i].Len) }

// copyName makes message i of b go to the address message j of from came
// from.
func (b *mmsgBatch) copyName(i int, from *mmsgBatch, j int) {
	b.names[i] = from.names[j]
	b.hdrs[i].Hdr.Namelen = from.hdrs[j].Hdr.Namelen
}

// addr returns the address message i came from.
func (b *mmsgBatch) addr(i int) netip.AddrPort {
	sa := &b.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port)) // scope ignored: loopback only
	}
	return netip.AddrPort{}
}

func ntohs(p uint16) uint16 {
	var b [2]byte
	*(*uint16)(unsafe.Pointer(&b[0])) = p
	return binary.BigEndian.Uint16(b[:])
}

// recv reads, without waiting, up to len(bufs) datagrams into bufs from
// the socket fd; syscall.EAGAIN when none is there.
func (b *mmsgBatch) recv(fd uintptr, bufs [][]byte) (int, syscall.Errno) {
	for i := range bufs {
		b.set(i, bufs[i])
		b.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
	}
	for {
		r, _, e := syscall.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(bufs)), unix.MSG_DONTWAIT, 0, 0)
		if e != syscall.EINTR {
			return int(r), e
		}
	}
}

// send sends messages 0 to n-1, waiting in the netpoller when the socket
// buffer is full. A message the kernel refuses is skipped, not retried.
func (b *mmsgBatch) send(rc syscall.RawConn, n int) error {
	off := 0
	var errno syscall.Errno
	for off < n {
		err := rc.Write(func(fd uintptr) bool {
			for {
				r, _, e := syscall.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[off])), uintptr(n-off), unix.MSG_DONTWAIT, 0, 0)
				switch e {
				case syscall.EINTR:
					continue
				case syscall.EAGAIN:
					return false
				case 0:
					off += max(int(r), 1)
				default:
					errno = e
					off++ // the client will retry this one
				}
				return true
			}
		})
		if err != nil {
			return err
		}
	}
	if errno != 0 {
		return errno
	}
	return nil
}

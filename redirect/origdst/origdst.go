// Package origdst reads the destination a captured TCP connection had
// before capture redirected it to the proxy, the way Envoy and HAProxy read
// it: getsockopt SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6),
// answered by conntrack for the iptables engine and by a BPF hook for the
// eBPF engine.
package origdst

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// optname is SO_ORIGINAL_DST at SOL_IP and IP6T_SO_ORIGINAL_DST at
// SOL_IPV6: the same number.
const optname = 80

// Lookup returns the original destination of an accepted connection.
func Lookup(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	// An IPv4 connection accepted on a dual-stack socket is tracked as
	// IPv4, so the level follows the connection, not the socket.
	local, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: local address: %w", err)
	}
	level := unix.SOL_IP
	if local.Addr().Unmap().Is6() {
		level = unix.SOL_IPV6
	}
	var out netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		var buf [unix.SizeofSockaddrInet6]byte
		l := uint32(len(buf))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), optname,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = fmt.Errorf("getsockopt original destination: %w", syscall.Errno(e))
			return
		}
		port := binary.BigEndian.Uint16(buf[2:4])
		switch binary.NativeEndian.Uint16(buf[0:2]) {
		case unix.AF_INET:
			out = netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port)
		case unix.AF_INET6:
			out = netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])).Unmap(), port)
		default:
			serr = fmt.Errorf("original destination: unexpected address family %d", binary.NativeEndian.Uint16(buf[0:2]))
		}
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return out, serr
}

package capture_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// packetLog makes the rules log, over NFLOG, each connection they
// redirect; it is switched on and off by installing again, without
// touching connections.
func TestPacketLogIsSwitchableAtRuntime(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			w.serveHTTP(8080)
			w.startProxies()
			logs := listenNFLOG(t, w.pod, 7)

			w.install("--packet-log", "nflog:7")
			for _, c := range []struct{ url, dst string }{
				{"http://10.1.0.2:8080/", "10.1.0.2:8080"},
				{"http://[fd00:1::2]:8080/", "[fd00:1::2]:8080"},
			} {
				if !w.fetch(appUID, c.url, "remote:8080", c.dst) {
					t.Errorf("%s was not proxied", c.url)
				}
				want := "shunt-out-redirect " + c.dst
				if !waitFor(func() bool { return strings.Contains(logs(), want) }) {
					t.Errorf("no NFLOG record %q; got:\n%s", want, logs())
				}
			}

			// Off again: the same capture, nothing logged.
			w.install()
			n := strings.Count(logs(), "\n")
			if !w.fetch(appUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
				t.Error("not proxied after switching the log off")
			}
			time.Sleep(200 * time.Millisecond)
			if got := strings.Count(logs(), "\n"); got != n {
				t.Errorf("records after switching the log off:\n%s", logs())
			}
		})
	}
}

func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// NFLOG over nfnetlink (linux/netfilter/nfnetlink_log.h), which x/sys/unix
// does not name.
const (
	nfnlSubsysULOG    = 4
	nfulnlMsgPacket   = 0
	nfulnlMsgConfig   = 1
	nfulaCfgCmd       = 1
	nfulaCfgMode      = 2
	nfulnlCfgCmdBind  = 1
	nfulnlCopyPacket  = 2
	nfulaPayload      = 9
	nfulaPrefix       = 10
	nfnetlinkV0       = 0
	nlaHeaderLen      = 4
	nfgenmsgLen       = 4
	nlmsgHeaderLength = unix.SizeofNlMsghdr
)

// listenNFLOG binds NFLOG group in n and returns the records received so
// far, one line each: "PREFIX DESTINATION" (the destination of the TCP or
// UDP packet).
func listenNFLOG(t *testing.T, n *testenv.Netns, group uint16) func() string {
	t.Helper()
	var fd int
	err := n.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	})
	if err != nil {
		t.Fatalf("nflog socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	cmd := nlAttr(nfulaCfgCmd, []byte{nfulnlCfgCmdBind})
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, 0xffff) // copy range
	mode[4] = nfulnlCopyPacket
	for _, attrs := range [][]byte{cmd, nlAttr(nfulaCfgMode, mode)} {
		if err := nfulConfig(fd, group, attrs); err != nil {
			t.Fatalf("configure nflog group %d: %v", group, err)
		}
	}
	var mu sync.Mutex
	var out strings.Builder
	go func() {
		buf := make([]byte, 65536)
		for {
			k, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return
			}
			msgs, err := parseNetlink(buf[:k])
			if err != nil {
				continue
			}
			for _, m := range msgs {
				if m.Header.Type != nfnlSubsysULOG<<8|nfulnlMsgPacket || len(m.Data) < nfgenmsgLen {
					continue
				}
				prefix, dst := "", ""
				for _, a := range parseAttrs(m.Data[nfgenmsgLen:]) {
					switch a.typ {
					case nfulaPrefix:
						prefix = strings.TrimRight(string(a.val), "\x00")
					case nfulaPayload:
						dst = packetDst(a.val)
					}
				}
				mu.Lock()
				fmt.Fprintf(&out, "%s %s\n", prefix, dst)
				mu.Unlock()
			}
		}
	}()
	return func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
}

func nfulConfig(fd int, group uint16, attrs []byte) error {
	body := []byte{unix.AF_UNSPEC, nfnetlinkV0, byte(group >> 8), byte(group)}
	body = append(body, attrs...)
	msg := make([]byte, nlmsgHeaderLength, nlmsgHeaderLength+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(nlmsgHeaderLength+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], nfnlSubsysULOG<<8|nfulnlMsgConfig)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	k, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := parseNetlink(buf[:k])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return unix.Errno(-code)
			}
		}
	}
	return nil
}

func parseNetlink(b []byte) ([]syscall.NetlinkMessage, error) { return syscall.ParseNetlinkMessage(b) }

func nlAttr(typ uint16, val []byte) []byte {
	l := nlaHeaderLen + len(val)
	a := make([]byte, nlaHeaderLen, (l+3)&^3)
	binary.NativeEndian.PutUint16(a[0:], uint16(l))
	binary.NativeEndian.PutUint16(a[2:], typ)
	a = append(a, val...)
	for len(a)%4 != 0 {
		a = append(a, 0)
	}
	return a
}

type attr struct {
	typ uint16
	val []byte
}

func parseAttrs(b []byte) []attr {
	var out []attr
	for len(b) >= nlaHeaderLen {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		if l < nlaHeaderLen || l > len(b) {
			break
		}
		out = append(out, attr{typ: binary.NativeEndian.Uint16(b[2:]) & 0x3fff, val: b[nlaHeaderLen:l]})
		b = b[min((l+3)&^3, len(b)):]
	}
	return out
}

// packetDst returns the destination address and port of an IP packet.
func packetDst(p []byte) string {
	if len(p) < 1 {
		return "?"
	}
	switch p[0] >> 4 {
	case 4:
		ihl := int(p[0]&0x0f) * 4
		if len(p) < ihl+4 {
			return "?"
		}
		a := netip.AddrFrom4([4]byte(p[16:20]))
		return netip.AddrPortFrom(a, binary.BigEndian.Uint16(p[ihl+2:])).String()
	case 6:
		if len(p) < 44 {
			return "?"
		}
		a := netip.AddrFrom16([16]byte(p[24:40]))
		return netip.AddrPortFrom(a, binary.BigEndian.Uint16(p[42:])).String()
	}
	return "?"
}

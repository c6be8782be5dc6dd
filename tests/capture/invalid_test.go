package capture_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// A segment conntrack cannot place in its connection (out of window, as
// after a loss) is INVALID: the nat table never sees it, so it reaches the
// original port, where no socket has that connection, and the pod answers
// with a reset, which can kill the client's connection. dropInvalid drops
// such segments first.
func TestDropInvalidStopsSpuriousResets(t *testing.T) {
	cases := []struct {
		backend    string
		drop       bool
		wantResets bool
	}{
		{"nft", false, true},
		{"nft", true, false},
		{"legacy", true, false},
		{nativeNftables, false, true},
		{nativeNftables, true, false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/dropInvalid=%v", c.backend, c.drop), func(t *testing.T) {
			w := newWorld(t, c.backend)
			holdListener(t, w.pod, "[::]:15006")
			args := []string{"--no-dns"}
			if c.drop {
				args = append(args, "--drop-invalid")
			}
			// nftables rules keep no counters: the drop is seen in the
			// packet log the rule writes instead.
			var nflog func() string
			if c.backend == nativeNftables && c.drop {
				nflog = listenNFLOG(t, w.pod, 9)
				args = append(args, "--packet-log", "nflog:9")
			}
			w.install(args...)
			for _, dst := range []string{"10.1.0.1:8080", "[fd00:1::1]:8080"} {
				// A real connection, captured by the inbound rules, kept open.
				var conn net.Conn
				err := w.remote.Do(func() (err error) {
					conn, err = net.DialTimeout("tcp", dst, 3*time.Second)
					return err
				})
				if err != nil {
					t.Fatalf("connect %s: %v", dst, err)
				}
				defer conn.Close()
				local := netip.MustParseAddrPort(conn.LocalAddr().String())
				sndNxt, rcvNxt, err := sequenceNumbers(conn.(*net.TCPConn))
				if err != nil {
					t.Fatalf("read the connection's sequence numbers: %v", err)
				}
				before := outResets(t, w.pod)
				// Beyond the right edge of any window: conntrack calls it
				// INVALID (a segment behind the left edge it would ignore).
				if err := injectSegment(w.remote, local, netip.MustParseAddrPort(dst), sndNxt+1<<24, rcvNxt); err != nil {
					t.Fatalf("inject: %v", err)
				}
				// A reset goes out at once when the segment arrives; give a
				// loaded machine time, and the client time to take it.
				resets := 0
				for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
					if resets = outResets(t, w.pod) - before; resets > 0 || !c.wantResets {
						break
					}
				}
				time.Sleep(300 * time.Millisecond)
				resets = outResets(t, w.pod) - before
				if (resets > 0) != c.wantResets {
					t.Errorf("%s: the pod sent %d resets for an out-of-window segment; want resets=%v\n%s", dst, resets, c.wantResets, w.saveCounted(false))
				}
				// The reset carries the acknowledgement the client expects:
				// without dropInvalid it kills the client's connection.
				_, err = conn.Write([]byte("still there\n"))
				if broke := err != nil; broke != c.wantResets {
					t.Errorf("%s: after the out-of-window segment, writing gave %v; want the connection broken=%v", dst, err, c.wantResets)
				}
			}
			if nflog != nil {
				for _, dst := range []string{"10.1.0.1:8080", "[fd00:1::1]:8080"} {
					if want := "shunt-drop-invalid " + dst; !waitFor(func() bool { return strings.Contains(nflog(), want) }) {
						t.Errorf("no NFLOG record %q of the dropped segment; got:\n%s", want, nflog())
					}
				}
			} else if c.drop {
				for _, v6 := range []bool{false, true} {
					prog := "iptables-" + c.backend + "-save"
					if v6 {
						prog = "ip6tables-" + c.backend + "-save"
					}
					if dropped := droppedInvalid(w.pod.MustRun(prog, "-c")); !dropped {
						t.Errorf("v6=%v: SHUNT_DROP_INVALID counted nothing", v6)
					}
				}
			}
		})
	}
}

// saveCounted is save with the iptables rules' counters.
func (w *world) saveCounted(v6 bool) string {
	if w.backend == nativeNftables {
		return w.save(v6)
	}
	prog := "iptables-" + w.backend + "-save"
	if v6 {
		prog = "ip6tables-" + w.backend + "-save"
	}
	return w.pod.MustRun(prog, "-c")
}

// holdListener accepts connections in n and keeps them open until the test
// ends, reading and discarding what arrives.
func holdListener(t *testing.T, n *testenv.Netns, addr string) {
	t.Helper()
	testenv.ServeTCP(t, n, addr, func(c *net.TCPConn) {
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	})
}

// outResets reads the namespace's TCP OutRsts counter (both families).
func outResets(t *testing.T, n *testenv.Netns) int {
	t.Helper()
	var names, values []string
	for _, line := range strings.Split(n.MustRun("cat", "/proc/net/snmp"), "\n") {
		if !strings.HasPrefix(line, "Tcp: ") {
			continue
		}
		if names == nil {
			names = strings.Fields(line)
		} else {
			values = strings.Fields(line)
		}
	}
	for i, name := range names {
		if name == "OutRsts" && i < len(values) {
			v, err := strconv.Atoi(values[i])
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatal("no Tcp OutRsts in /proc/net/snmp")
	return 0
}

// droppedInvalid reports whether the DROP rule of iptables-save -c output
// counted packets.
func droppedInvalid(save string) bool {
	m := regexp.MustCompile(`\[(\d+):\d+\] -A SHUNT_DROP_INVALID .*-j DROP`).FindStringSubmatch(save)
	return m != nil && m[1] != "0"
}

// Queues of TCP_REPAIR_QUEUE (linux/tcp.h), which x/sys/unix lacks.
const (
	tcpRecvQueue = 1
	tcpSendQueue = 2
)

// sequenceNumbers returns the next sequence number a connection sends and
// the next it expects, read in TCP repair mode (root only).
func sequenceNumbers(c *net.TCPConn) (snd, rcv uint32, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	cerr := raw.Control(func(fd uintptr) {
		if err = unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_REPAIR, 1); err != nil {
			return
		}
		defer func() { _ = unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_REPAIR, 0) }()
		var v int
		for _, q := range []struct {
			queue int
			out   *uint32
		}{{tcpSendQueue, &snd}, {tcpRecvQueue, &rcv}} {
			if err = unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
				return
			}
			if v, err = unix.GetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_QUEUE_SEQ); err != nil {
				return
			}
			*q.out = uint32(v)
		}
	})
	if cerr != nil {
		return 0, 0, cerr
	}
	return snd, rcv, err
}

// injectSegment sends, from n, one TCP segment (PSH+ACK, one byte) of the
// connection local->remote with the given sequence and acknowledgement
// numbers.
func injectSegment(n *testenv.Netns, local, remote netip.AddrPort, seq, ack uint32) error {
	seg := make([]byte, 21) // header and one byte of data
	binary.BigEndian.PutUint16(seg[0:], local.Port())
	binary.BigEndian.PutUint16(seg[2:], remote.Port())
	binary.BigEndian.PutUint32(seg[4:], seq)
	binary.BigEndian.PutUint32(seg[8:], ack)
	seg[12] = 5 << 4
	seg[13] = 0x18 // PSH, ACK
	binary.BigEndian.PutUint16(seg[14:], 512)
	seg[20] = 'x'
	binary.BigEndian.PutUint16(seg[16:], tcpChecksum(local.Addr(), remote.Addr(), seg))
	return n.Do(func() error {
		fam := unix.AF_INET6
		var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: remote.Addr().As16()}
		if remote.Addr().Is4() {
			fam, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: remote.Addr().As4()}
		}
		fd, err := unix.Socket(fam, unix.SOCK_RAW, unix.IPPROTO_TCP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, seg, 0, sa)
	})
}

func tcpChecksum(src, dst netip.Addr, seg []byte) uint16 {
	var pseudo []byte
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = append(pseudo, 0, unix.IPPROTO_TCP, byte(len(seg)>>8), byte(len(seg)))
	} else {
		s, d := src.As16(), dst.As16()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(seg)))
		pseudo = append(pseudo, 0, 0, 0, unix.IPPROTO_TCP)
	}
	var sum uint32
	data := append(pseudo, seg...)
	if len(data)%2 == 1 {
		data = append(data, 0)
	}
	for i := 0; i < len(data); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(data[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

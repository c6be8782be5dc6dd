package capture_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// With inboundMode tproxy the proxy's listener sees the real client as its
// peer and the real destination as its local address, and the proxy can
// reach the application from the client's address: the application sees
// who called it. The policy route that takes the application's replies
// back to the proxy is shunt's (netlink), in both families.
func TestTProxyInboundKeepsTheClientAddress(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			peerApp(t, w.pod, "[::]:8080")
			peerApp(t, w.pod, "[::]:9090")
			seen := transparentProxy(t, w.pod, redirect.DefaultTProxyMark)
			w.install("--inbound-mode", "tproxy", "--exclude-inbound-ports", "9090", "--no-dns")

			for _, fam := range []string{"-4", "-6"} {
				rules := w.pod.MustRun("ip", fam, "rule")
				if !strings.Contains(rules, "fwmark 0x539 lookup 133") {
					t.Errorf("ip %s rule lacks shunt's TPROXY rule:\n%s", fam, rules)
				}
				if routes := w.pod.MustRun("ip", fam, "route", "show", "table", "133"); !strings.Contains(routes, "local default dev lo") {
					t.Errorf("ip %s route table 133 lacks the local route:\n%s", fam, routes)
				}
			}

			for _, c := range []struct{ dst, clients string }{
				{"10.1.0.1:8080", "10.1.0.2"},
				{"[fd00:1::1]:8080", "fd00:1::2 fd00:1::3"},
			} {
				got, err := curlFrom(w.remote, "http://"+c.dst+"/")
				if err != nil {
					t.Errorf("remote GET %s: %v %s", c.dst, err, got)
					continue
				}
				peer, ok := strings.CutPrefix(got, "app saw ")
				if !ok || !strings.Contains(c.clients, peer) {
					t.Errorf("remote GET %s = %q; want the application to see one of %s", c.dst, got, c.clients)
				}
				if want := peer + " -> " + c.dst; !strings.Contains(seen(), want) {
					t.Errorf("the proxy did not accept %s (with addresses unchanged); it saw:\n%s", want, seen())
				}
			}
			// An excluded port reaches the application without the proxy.
			if got, err := curlFrom(w.remote, "http://10.1.0.1:9090/"); err != nil || got != "app saw 10.1.0.2" {
				t.Errorf("remote GET excluded port = %q, %v", got, err)
			}
			if strings.Contains(seen(), ":9090") {
				t.Errorf("the proxy saw the excluded port:\n%s", seen())
			}

			// A policy rule removed behind shunt's back is drift, and
			// installing again puts it back.
			w.pod.MustRun("ip", "-4", "rule", "del", "fwmark", "0x539", "lookup", "133")
			if out, err := w.shunt("status"); err == nil || !strings.Contains(out, "policy rule fwmark 0x539 lookup 133 is missing") {
				t.Errorf("status after the rule was removed: %v\n%s", err, out)
			}
			w.install("--inbound-mode", "tproxy", "--exclude-inbound-ports", "9090", "--no-dns")
			if rules := w.pod.MustRun("ip", "-4", "rule"); !strings.Contains(rules, "fwmark 0x539 lookup 133") {
				t.Errorf("install did not repair the policy rule:\n%s", rules)
			}
			if out, err := w.shunt("status"); err != nil {
				t.Errorf("status after the repair: %v\n%s", err, out)
			}

			if out, err := w.shunt("uninstall"); err != nil {
				t.Fatalf("uninstall: %v\n%s", err, out)
			}
			for _, fam := range []string{"-4", "-6"} {
				if rules := w.pod.MustRun("ip", fam, "rule"); strings.Contains(rules, "0x539") {
					t.Errorf("uninstall left the policy rule:\n%s", rules)
				}
				if routes, _ := w.pod.Run("ip", fam, "route", "show", "table", "133"); strings.Contains(routes, "local") {
					t.Errorf("uninstall left the local route:\n%s", routes)
				}
			}
		})
	}
}

// Changing inbound mode replaces the rules and the routes in one install.
func TestTProxyModeCanBeSwitched(t *testing.T) {
	for _, backend := range []string{"nft", nativeNftables} {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			peerApp(t, w.pod, "[::]:8080")
			seen := transparentProxy(t, w.pod, 0x77)
			w.install("--inbound-mode", "tproxy", "--tproxy-mark", "0x77", "--tproxy-route-table", "177", "--no-dns")
			if got, err := curlFrom(w.remote, "http://10.1.0.1:8080/"); err != nil || got != "app saw 10.1.0.2" || !strings.Contains(seen(), "10.1.0.2 -> 10.1.0.1:8080") {
				t.Errorf("GET with tproxy mark 0x77 = %q, %v; proxy saw %s", got, err, seen())
			}
			w.install("--no-dns")
			for _, fam := range []string{"-4", "-6"} {
				if rules := w.pod.MustRun("ip", fam, "rule"); strings.Contains(rules, "lookup 177") {
					t.Errorf("back to redirect mode, the policy rule stayed:\n%s", rules)
				}
			}
			if save := w.save(false); strings.Contains(strings.ToLower(save), "tproxy") {
				t.Errorf("back to redirect mode, TPROXY rules stayed:\n%s", save)
			}
		})
	}
}

// Moving a TPROXY capture from one netfilter engine to the other keeps the
// policy route both use: the old engine's uninstall does not take the new
// capture's route with it.
func TestTProxyEngineChangeKeepsTheRoute(t *testing.T) {
	w := newWorld(t, "nft")
	testenv.RequireBinary(t, "nft")
	peerApp(t, w.pod, "[::]:8080")
	seen := transparentProxy(t, w.pod, redirect.DefaultTProxyMark)
	w.install("--inbound-mode", "tproxy", "--no-dns")
	for _, engine := range []string{"nftables", "iptables"} {
		out, err := w.shunt("install", "--engine", engine, "--inbound-mode", "tproxy", "--no-dns")
		if err != nil {
			t.Fatalf("install --engine %s: %v\n%s", engine, err, out)
		}
		if out, err := w.shunt("status"); err != nil || !strings.Contains(out, "engine:  "+engine) {
			t.Errorf("status after moving to %s: %v\n%s", engine, err, out)
		}
		for _, c := range []struct{ dst, client string }{{"10.1.0.1:8080", "10.1.0.2"}, {"[fd00:1::1]:8080", "fd00:1::"}} {
			got, err := curlFrom(w.remote, "http://"+c.dst+"/")
			if err != nil || !strings.HasPrefix(got, "app saw "+c.client) || !strings.Contains(seen(), " -> "+c.dst) {
				t.Errorf("%s: remote GET %s = %q, %v; proxy saw:\n%s", engine, c.dst, got, err, seen())
			}
		}
	}
}

// peerApp is an application that answers HTTP with the address of its
// peer.
func peerApp(t *testing.T, n *testenv.Netns, addr string) {
	t.Helper()
	testenv.ServeTCP(t, n, addr, func(c *net.TCPConn) {
		peer := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap()
		testenv.ReplyHTTP(c, "app saw "+peer.String())
	})
}

// transparentProxy stands in for Envoy's TPROXY inbound listener (a
// transparent listener on 15006 in each family) and its original-source
// forwarding: it connects to the destination it accepted for, from the
// client's address, with the TPROXY mark. It returns the log of what it
// accepted ("client -> destination" lines).
func transparentProxy(t *testing.T, n *testenv.Netns, mark uint32) func() string {
	t.Helper()
	var mu sync.Mutex
	var log strings.Builder
	transparent := func(v6 bool) func(string, string, syscall.RawConn) error {
		return func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if v6 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				}
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	for _, l := range []struct {
		network, addr string
		v6            bool
	}{{"tcp4", "0.0.0.0:15006", false}, {"tcp6", "[::]:15006", true}} {
		var ln net.Listener
		lc := net.ListenConfig{Control: transparent(l.v6)}
		if err := n.Do(func() (err error) { ln, err = lc.Listen(context.Background(), l.network, l.addr); return err }); err != nil {
			t.Fatalf("transparent listen %s: %v", l.addr, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func(v6 bool) {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				client := netip.MustParseAddrPort(c.RemoteAddr().String())
				dst := netip.MustParseAddrPort(c.LocalAddr().String())
				mu.Lock()
				fmt.Fprintf(&log, "%s -> %s\n", client.Addr().Unmap(), netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()))
				mu.Unlock()
				go func() {
					defer c.Close()
					d := net.Dialer{
						Timeout:   3 * time.Second,
						LocalAddr: &net.TCPAddr{IP: client.Addr().AsSlice()},
						Control: func(network, address string, rc syscall.RawConn) error {
							if err := transparent(v6)(network, address, rc); err != nil {
								return err
							}
							var serr error
							err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) })
							if err != nil {
								return err
							}
							return serr
						},
					}
					var up net.Conn
					if err := n.Do(func() (err error) { up, err = d.Dial("tcp", dst.String()); return err }); err != nil {
						mu.Lock()
						fmt.Fprintf(&log, "dial %s from %s: %v\n", dst, client.Addr(), err)
						mu.Unlock()
						return
					}
					defer up.Close()
					go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
					_, _ = io.Copy(c, up)
				}()
			}
		}(l.v6)
	}
	return func() string { mu.Lock(); defer mu.Unlock(); return log.String() }
}

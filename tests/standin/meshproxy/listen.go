package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/shunt-dev/shunt/redirect/origdst"
)

// bound is one socket the double listens on, for the listener of that
// address in the current runtime.
type bound struct {
	key   string
	close func() error
}

func listenConfig(v6 bool) net.ListenConfig {
	return net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			// Envoy binds [::] as IPv6 only unless ipv4_compat is set.
			if v6 {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
}

// reconcileBinds opens the sockets rt wants and closes the others. A socket
// that cannot be bound fails the update, as in Envoy (the LDS is NACKed).
func (p *proxy) reconcileBinds(rt *runtime) error {
	p.bindMu.Lock()
	defer p.bindMu.Unlock()
	opened := map[string]*bound{}
	for key, li := range rt.binds {
		if b, ok := p.bound[key]; ok {
			opened[key] = b
			continue
		}
		netw, addr, _ := strings.Cut(key, "|")
		ap := netip.MustParseAddrPort(addr)
		lc := listenConfig(ap.Addr().Is6())
		fam := "4"
		if ap.Addr().Is6() {
			fam = "6"
		}
		var b *bound
		if netw == "udp" {
			pc, err := lc.ListenPacket(context.Background(), "udp"+fam, addr)
			if err != nil {
				closeNew(opened, p.bound)
				return fmt.Errorf("listener %s: bind %s: %w", li.name, addr, err)
			}
			name := li.name
			srv := serveDNS(pc, func() dnsTable {
				if l := p.rt.Load().listeners[name]; l != nil {
					return l.dns
				}
				return nil
			})
			b = &bound{key: key, close: srv.Close}
		} else {
			ln, err := lc.Listen(context.Background(), "tcp"+fam, addr)
			if err != nil {
				closeNew(opened, p.bound)
				return fmt.Errorf("listener %s: bind %s: %w", li.name, addr, err)
			}
			go p.accept(ln, key)
			b = &bound{key: key, close: ln.Close}
		}
		log.Printf("listening on %s %s (listener %s)", netw, addr, li.name)
		opened[key] = b
	}
	for key, b := range p.bound {
		if _, ok := opened[key]; !ok {
			_ = b.close()
			log.Printf("closed %s", key)
		}
	}
	p.bound = opened
	return nil
}

func closeNew(opened, old map[string]*bound) {
	for k, b := range opened {
		if _, ok := old[k]; !ok {
			_ = b.close()
		}
	}
}

func (p *proxy) accept(ln net.Listener, key string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c.(*net.TCPConn), key)
	}
}

// handle follows Envoy's path for a connection: the listener (by original
// destination when use_original_dst), its listener filters, the filter
// chain, the chain's TLS termination, the network filter.
func (p *proxy) handle(c *net.TCPConn, key string) {
	defer c.Close()
	rt := p.rt.Load()
	li := rt.binds[key]
	if li == nil {
		return
	}
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	dst := netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	desc := "listener=" + li.name
	if li.useOrigDst {
		orig, err := origdst.Lookup(c)
		if err != nil {
			log.Printf("conn %s original destination unknown: %v", desc, err)
			return
		}
		dst = netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port())
		// Envoy hands the connection to the listener of that exact
		// address, else of the wildcard address on that port.
		if v := rt.virtual[dst]; v != nil {
			li = v
		} else if v := rt.virtual[netip.AddrPortFrom(wildcard(dst.Addr()), dst.Port())]; v != nil {
			li = v
		}
		desc = "orig=" + dst.String()
	}
	br := bufio.NewReaderSize(c, 16<<10+5)
	sni, transport := "", "raw_buffer"
	if li.inspector {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		sni, transport = inspect(br)
		_ = c.SetReadDeadline(time.Time{})
		desc += " transport=" + transport
		if sni != "" {
			desc += " sni=" + sni
		}
	}
	ch := selectChain(li, dst, sni, transport)
	if ch == nil {
		log.Printf("conn %s refused: no filter chain matches (listener %s)", desc, li.name)
		return
	}
	if ch.name != "" {
		desc += " chain=" + ch.name
	}
	var down net.Conn = &bufConn{TCPConn: c, r: br}
	if ch.tls != nil {
		if ch.tls.err != nil {
			log.Printf("conn %s refused: %v", desc, ch.tls.err)
			return
		}
		tc := tls.Server(down, ch.tls.serverConfig())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			log.Printf("conn %s refused: TLS handshake: %v", desc, err)
			return
		}
		desc += " peer=" + peerIdentity(tc.ConnectionState())
		down = tc
	}
	p.serveChain(rt, ch, down, dst, desc)
}

func wildcard(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// selectChain is Envoy's filter chain match: stage by stage (destination
// port, destination IP, server name, transport protocol), the most specific
// chains that match stay, else those that do not constrain the stage.
func selectChain(li *lis, dst netip.AddrPort, sni, transport string) *chain {
	cands := li.chains
	cands = stage(cands, func(c *chain) (bool, int, bool) {
		p := c.match.GetDestinationPort()
		if p == nil {
			return false, 0, true
		}
		return p.GetValue() == uint32(dst.Port()), 1, false
	})
	cands = stage(cands, func(c *chain) (bool, int, bool) {
		rs := c.match.GetPrefixRanges()
		if len(rs) == 0 {
			return false, 0, true
		}
		best := -1
		for _, r := range rs {
			a, err := netip.ParseAddr(r.GetAddressPrefix())
			if err != nil {
				continue
			}
			pf := netip.PrefixFrom(a.Unmap(), int(r.GetPrefixLen().GetValue()))
			if pf.Contains(dst.Addr()) && pf.Bits() > best {
				best = pf.Bits()
			}
		}
		return best >= 0, best, false
	})
	cands = stage(cands, func(c *chain) (bool, int, bool) {
		names := c.match.GetServerNames()
		if len(names) == 0 {
			return false, 0, true
		}
		best := -1
		for _, n := range names {
			switch {
			case strings.EqualFold(n, sni) && sni != "":
				best = max(best, 1<<20)
			case strings.HasPrefix(n, "*.") && sni != "" && strings.HasSuffix(strings.ToLower(sni), strings.ToLower(n[1:])):
				best = max(best, len(n))
			}
		}
		return best >= 0, best, false
	})
	cands = stage(cands, func(c *chain) (bool, int, bool) {
		tp := c.match.GetTransportProtocol()
		if tp == "" {
			return false, 0, true
		}
		return tp == transport, 1, false
	})
	if len(cands) > 0 {
		return cands[0]
	}
	return li.defaultChan
}

// stage keeps the chains that match with the highest rank, else the ones
// that leave the criterion open.
func stage(cands []*chain, f func(*chain) (match bool, rank int, open bool)) []*chain {
	var best []*chain
	bestRank := -1
	var open []*chain
	for _, c := range cands {
		m, r, o := f(c)
		switch {
		case o:
			open = append(open, c)
		case m && r > bestRank:
			best, bestRank = []*chain{c}, r
		case m && r == bestRank:
			best = append(best, c)
		}
	}
	if len(best) > 0 {
		return best
	}
	return open
}

// inspect is the tls_inspector: it peeks at the first bytes without
// consuming them and reports the ClientHello's server name.
func inspect(br *bufio.Reader) (sni, transport string) {
	hdr, err := br.Peek(5)
	if err != nil || hdr[0] != 0x16 || hdr[1] != 3 {
		return "", "raw_buffer"
	}
	n := int(hdr[3])<<8 | int(hdr[4])
	rec, err := br.Peek(5 + n)
	if err != nil {
		return "", "raw_buffer"
	}
	var name string
	errStop := errors.New("stop")
	_ = tls.Server(&replay{data: append([]byte(nil), rec...)}, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name = h.ServerName
		return nil, errStop
	}}).Handshake()
	return name, "tls"
}

// replay is a conn that reads a recorded ClientHello and swallows writes.
type replay struct {
	data []byte
}

func (r *replay) Read(b []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b, r.data)
	r.data = r.data[n:]
	return n, nil
}
func (r *replay) Write(b []byte) (int, error)      { return len(b), nil }
func (r *replay) Close() error                     { return nil }
func (r *replay) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (r *replay) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (r *replay) SetDeadline(time.Time) error      { return nil }
func (r *replay) SetReadDeadline(time.Time) error  { return nil }
func (r *replay) SetWriteDeadline(time.Time) error { return nil }

// bufConn reads what the inspector peeked before the rest of the socket.
type bufConn struct {
	*net.TCPConn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

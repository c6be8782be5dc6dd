// Package validate proves that installed capture really redirects: it
// listens where the proxy's outbound listener will, connects from a
// captured user to an address that exists nowhere, and checks that the
// connection arrived with that address as its original destination. It is
// what `shunt install --validate` runs before the proxy starts.
package validate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/origdst"
)

// Options say what to validate and where.
type Options struct {
	// NetnsPath is the namespace to validate in ("" = the current one).
	NetnsPath string
	// Timeout bounds the probe (default 3 s).
	Timeout time.Duration
}

// probeAddrs are documentation addresses (RFC 5737): never a real peer, so
// a probe that escapes capture reaches nothing.
var probeAddrs = []netip.Addr{
	netip.MustParseAddr("192.0.2.1"),
	netip.MustParseAddr("198.51.100.1"),
	netip.MustParseAddr("203.0.113.1"),
}

var probePorts = []uint16{80, 8080, 9, 15999, 32767}

// Result describes a successful probe.
type Result struct {
	Probe       netip.AddrPort `json:"probe"`
	Listener    netip.AddrPort `json:"listener"`
	OriginalDst netip.AddrPort `json:"originalDst"`
}

// Outbound checks that a TCP connection from this process (which must not
// be the proxy's user) to an outside address is redirected to the plan's
// outbound port with its original destination intact. The outbound port
// must be free: validation runs before the proxy starts.
func Outbound(ctx context.Context, p *redirect.Plan, opts Options) (*Result, error) {
	if uid := uint32(os.Geteuid()); uid == p.ProxyUID {
		return nil, fmt.Errorf("validate: running as the proxy's user (uid %d), whose traffic is never captured; run validation as another user", uid)
	}
	if p.ProxyGID != nil && uint32(os.Getegid()) == *p.ProxyGID {
		return nil, fmt.Errorf("validate: running as the proxy's group (gid %d), whose traffic is never captured", *p.ProxyGID)
	}
	probe, err := pickProbe(p, uint32(os.Geteuid()))
	if err != nil {
		return nil, err
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var res *Result
	run := func() error {
		var err error
		res, err = outbound(ctx, p, probe)
		return err
	}
	if opts.NetnsPath == "" {
		err = run()
	} else {
		err = ns.WithNetNSPath(opts.NetnsPath, func(ns.NetNS) error { return run() })
	}
	return res, err
}

func outbound(ctx context.Context, p *redirect.Plan, probe netip.AddrPort) (*Result, error) {
	listen := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.OutboundPort)
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp4", listen.String())
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("validate: the outbound port %s is in use: validation must run before the proxy starts", listen)
		}
		return nil, fmt.Errorf("validate: listen on %s: %w", listen, err)
	}
	defer ln.Close()

	type accepted struct {
		dst netip.AddrPort
		err error
	}
	got := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- accepted{err: err}
			return
		}
		defer c.Close()
		dst, err := origdst.Lookup(c.(*net.TCPConn))
		got <- accepted{dst: dst, err: err}
	}()

	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp4", probe.String())
	if err != nil {
		switch {
		case errors.Is(err, syscall.ENETUNREACH):
			return nil, fmt.Errorf("validate: no route to %s: the namespace needs its network (a default route) before validation", probe.Addr())
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
			return nil, fmt.Errorf("validate: connection to %s was not redirected to %s (it timed out going out): outbound capture is not working", probe, listen)
		}
		return nil, fmt.Errorf("validate: connection to %s was not redirected to %s: %w", probe, listen, err)
	}
	defer conn.Close()
	select {
	case a := <-got:
		if a.err != nil {
			return nil, fmt.Errorf("validate: read the probe's original destination: %w", a.err)
		}
		if a.dst != probe {
			return nil, fmt.Errorf("validate: the probe arrived with original destination %s, want %s", a.dst, probe)
		}
		return &Result{Probe: probe, Listener: listen, OriginalDst: a.dst}, nil
	case <-ctx.Done():
		// Connected, yet nothing reached our listener: something answered
		// at the probe address, so the connection left uncaptured.
		return nil, fmt.Errorf("validate: connection to %s was not redirected to %s: outbound capture is not working", probe, listen)
	}
}

// pickProbe chooses an address and port the plan captures for uid.
func pickProbe(p *redirect.Plan, uid uint32) (netip.AddrPort, error) {
	var addr netip.Addr
	for _, a := range probeAddrs {
		if !inPrefixes(a, p.ExcludeOutboundCIDRs) {
			addr = a
			break
		}
	}
	if !addr.IsValid() {
		return netip.AddrPort{}, errors.New("validate: every probe address (192.0.2.1, 198.51.100.1, 203.0.113.1) is excluded from capture")
	}
	for _, port := range probePorts {
		if port == p.OutboundPort || port == p.InboundPort || port == p.DNSPort || inRanges(port, p.ExcludeOutboundPorts) {
			continue
		}
		excluded := false
		for _, x := range p.ExcludeOutboundPortsForUIDs {
			if x.Protocol != "udp" && inRanges(port, x.Ports) && inIDs(uid, x.UIDs) {
				excluded = true
			}
		}
		if !excluded {
			return netip.AddrPortFrom(addr, port), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("validate: every probe port %v is excluded from capture", probePorts)
}

func inPrefixes(a netip.Addr, l []netip.Prefix) bool {
	for _, p := range l {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func inRanges(port uint16, l []redirect.PortRange) bool {
	for _, r := range l {
		if r.Contains(port) {
			return true
		}
	}
	return false
}

func inIDs(id uint32, l []redirect.IDRange) bool {
	for _, r := range l {
		if id >= r.First && id <= r.Last {
			return true
		}
	}
	return false
}

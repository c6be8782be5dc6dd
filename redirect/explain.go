package redirect

import (
	"fmt"
	"net/netip"
	"slices"
)

// Direction of a packet relative to the workload.
type Direction string

const (
	Outbound Direction = "out"
	Inbound  Direction = "in"
)

// Packet is the first packet of a flow, as far as capture decisions go.
type Packet struct {
	Direction Direction
	Proto     string // "tcp" or "udp"
	Src       netip.Addr
	Dst       netip.AddrPort
	// UID and GID of the sending socket (outbound only).
	UID uint32
	GID *uint32
	// Mark of the sending socket (outbound only).
	Mark uint32
	// Iface is the outgoing interface for outbound packets, the incoming
	// one for inbound; "lo" for loopback.
	Iface string
}

// Action is what capture does with a packet.
type Action string

const (
	// Redirect sends the packet to a local port of the proxy or of shunt.
	Redirect Action = "redirect"
	// Pass leaves the packet alone.
	Pass Action = "pass"
	// Reject refuses the packet at once (egress lockdown).
	Reject Action = "reject"
)

// Verdict explains a decision.
type Verdict struct {
	Action Action `json:"action"`
	Port   uint16 `json:"port,omitempty"`
	Reason string `json:"reason"`
}

func (v Verdict) String() string {
	if v.Action == Redirect {
		return fmt.Sprintf("redirected to port %d: %s", v.Port, v.Reason)
	}
	return fmt.Sprintf("%s: %s", v.Action, v.Reason)
}

// Explain evaluates the plan for one packet, in the same order as the
// engines' rules, so a user can see why a connection was or was not captured.
func (p *Plan) Explain(pkt Packet) Verdict {
	if pkt.Direction == Inbound {
		return p.explainInbound(pkt)
	}
	return p.explainOutbound(pkt)
}

func (p *Plan) explainInbound(pkt Packet) Verdict {
	dst := pkt.Dst
	if i := slices.IndexFunc(p.VNets, func(v VNet) bool { return v.Interface == pkt.Iface }); i >= 0 && pkt.Iface != "" {
		return p.explainVNet(pkt, p.VNets[i])
	}
	switch {
	case !p.CaptureInbound:
		return Verdict{Action: Pass, Reason: "inbound capture is disabled (noInbound)"}
	case pkt.Proto != "tcp":
		return Verdict{Action: Pass, Reason: "only TCP is captured inbound"}
	case pkt.Iface == "lo":
		return Verdict{Action: Pass, Reason: "loopback traffic is not captured inbound"}
	case slices.Contains(p.ExcludeInterfaces, pkt.Iface) && pkt.Iface != "":
		return Verdict{Action: Pass, Reason: fmt.Sprintf("interface %s is excluded (excludeInterfaces)", pkt.Iface)}
	}
	if pfx, ok := matchPrefix(p.ExcludeInboundCIDRs, pkt.Src); ok {
		return Verdict{Action: Pass, Reason: fmt.Sprintf("source %s is in excluded CIDR %s (excludeInboundCidrs)", pkt.Src, pfx)}
	}
	if r, ok := matchPort(p.ExcludeInboundPorts, dst.Port()); ok {
		return Verdict{Action: Pass, Reason: fmt.Sprintf("port %d is excluded by %s (excludeInboundPorts)", dst.Port(), r)}
	}
	if len(p.IncludeInboundPorts) > 0 && !anyPort(p.IncludeInboundPorts, dst.Port()) {
		return Verdict{Action: Pass, Reason: fmt.Sprintf("port %d is not in includeInboundPorts %s", dst.Port(), joinStrings(p.IncludeInboundPorts))}
	}
	if p.InboundTProxy != nil {
		return Verdict{Action: Redirect, Port: p.InboundPort, Reason: "inbound TCP goes to the proxy's inbound listener by TPROXY, its addresses unchanged (inboundMode tproxy)"}
	}
	return Verdict{Action: Redirect, Port: p.InboundPort, Reason: "inbound TCP goes to the proxy's inbound listener"}
}

// explainVNet decides for TCP arriving on a nested workload's interface,
// which is that workload's outbound traffic.
func (p *Plan) explainVNet(pkt Packet, v VNet) Verdict {
	dst := pkt.Dst.Addr().Unmap()
	if pkt.Dst.Port() == 53 {
		switch {
		case p.DNSMode == DNSAll:
			return Verdict{Action: Redirect, Port: p.DNSPort, Reason: fmt.Sprintf("DNS arriving on %s goes to shunt's DNS interceptor (vnetInterfaces, redirectAllDNS)", v.Interface)}
		case p.DNSMode == DNSResolvers && slices.Contains(p.DNSServersOf(dst.Is6()), dst):
			return Verdict{Action: Redirect, Port: p.DNSPort, Reason: fmt.Sprintf("DNS arriving on %s to %s, a nameserver of %s, goes to shunt's DNS interceptor (vnetInterfaces)", v.Interface, dst, p.ResolvConf)}
		}
	}
	switch {
	case pkt.Proto != "tcp":
		return Verdict{Action: Pass, Reason: fmt.Sprintf("only TCP arriving on %s is captured (vnetInterfaces)", v.Interface)}
	case v.CIDR.IsValid() && v.CIDR.Contains(dst):
		return Verdict{Action: Pass, Reason: fmt.Sprintf("destination %s is inside the nested network %s (vnetInterfaces)", dst, v)}
	}
	if why, ok := p.notIncluded(dst, pkt.Dst.Port()); !ok {
		return Verdict{Action: Pass, Reason: why}
	}
	return Verdict{Action: Redirect, Port: p.OutboundPort, Reason: fmt.Sprintf("TCP arriving on %s is a nested workload's outbound traffic and goes to the proxy's outbound listener (vnetInterfaces)", v.Interface)}
}

// notIncluded checks the outbound include lists; ok is true when the
// destination is captured by them.
func (p *Plan) notIncluded(dst netip.Addr, port uint16) (why string, ok bool) {
	if len(p.IncludeOutboundCIDRs) > 0 {
		if _, in := matchPrefix(p.IncludeOutboundCIDRs, dst); !in {
			return fmt.Sprintf("destination %s is not in includeOutboundCidrs %s", dst, joinStrings(p.IncludeOutboundCIDRs)), false
		}
	}
	if len(p.IncludeOutboundPorts) > 0 && !anyPort(p.IncludeOutboundPorts, port) {
		return fmt.Sprintf("port %d is not in includeOutboundPorts %s", port, joinStrings(p.IncludeOutboundPorts)), false
	}
	return "", true
}

func (p *Plan) explainOutbound(pkt Packet) Verdict {
	dst := pkt.Dst.Addr().Unmap()
	v6 := dst.Is6()
	if pkt.Iface != "" && pkt.Iface != "lo" && slices.Contains(p.ExcludeInterfaces, pkt.Iface) {
		return Verdict{Action: Pass, Reason: fmt.Sprintf("interface %s is excluded (excludeInterfaces)", pkt.Iface)}
	}
	isDNS := pkt.Dst.Port() == 53
	if p.BypassMark != 0 && pkt.Mark == p.BypassMark {
		return p.lockdown(pkt, Verdict{Action: Pass, Reason: fmt.Sprintf("socket carries the bypass mark %#x (bypassMark)", p.BypassMark)})
	}
	if p.InboundTProxy != nil && pkt.Mark == p.InboundTProxy.Mark {
		return p.lockdown(pkt, Verdict{Action: Pass, Reason: fmt.Sprintf("socket carries the TPROXY mark %#x: the proxy forwarding an inbound connection from the client's address (tproxyMark)", p.InboundTProxy.Mark)})
	}
	if pkt.Iface == "lo" && (pkt.Src == InboundPassthroughV4 || pkt.Src == InboundPassthroughV6) {
		return Verdict{Action: Pass, Reason: "the proxy's inbound passthrough (source " + pkt.Src.String() + ") returns to the application"}
	}
	loopDst := dst.IsLoopback()
	if pkt.Proto == "tcp" && p.CaptureInbound && pkt.Iface == "lo" && pkt.UID == p.ProxyUID && !isLocalhost(dst) {
		return Verdict{Action: Redirect, Port: p.InboundPort, Reason: "the proxy connecting to the workload's own address goes to the inbound listener"}
	}
	// Lockdown holds for the proxy too: a misconfigured proxy cannot reach
	// what the mesh does not allow.
	if pkt.UID == p.ProxyUID {
		return p.lockdown(pkt, Verdict{Action: Pass, Reason: fmt.Sprintf("UID %d is the proxy's (proxyUID)", p.ProxyUID)})
	}
	if p.ProxyGID != nil && pkt.GID != nil && *pkt.GID == *p.ProxyGID {
		return p.lockdown(pkt, Verdict{Action: Pass, Reason: fmt.Sprintf("GID %d is the proxy's (proxyGID)", *p.ProxyGID)})
	}
	for _, e := range p.ExcludeOutboundPortsForUIDs {
		if (e.Protocol == "all" || e.Protocol == pkt.Proto) && anyPort(e.Ports, pkt.Dst.Port()) && anyID(e.UIDs, pkt.UID) {
			return Verdict{Action: Pass, Reason: fmt.Sprintf("UID %d to port %d is excluded by %s (excludeOutboundPortsForUids)", pkt.UID, pkt.Dst.Port(), e)}
		}
	}
	if isDNS {
		switch {
		case p.DNSMode == DNSAll:
			return Verdict{Action: Redirect, Port: p.DNSPort, Reason: "DNS to any server goes to shunt's DNS interceptor (redirectAllDNS)"}
		case p.DNSMode == DNSResolvers && slices.Contains(p.DNSServersOf(v6), dst):
			return Verdict{Action: Redirect, Port: p.DNSPort, Reason: fmt.Sprintf("DNS to %s, a nameserver of %s, goes to shunt's DNS interceptor", dst, p.ResolvConf)}
		}
	}
	if pkt.Proto != "tcp" {
		return p.lockdown(pkt, Verdict{Action: Pass, Reason: "only TCP (and DNS) is captured outbound"})
	}
	if pkt.Iface == "lo" || loopDst {
		return Verdict{Action: Pass, Reason: "loopback traffic between local applications is not captured"}
	}
	if pfx, ok := matchPrefix(p.ExcludeOutboundCIDRs, dst); ok {
		return p.lockdown(pkt, Verdict{Action: Pass, Reason: fmt.Sprintf("destination %s is in excluded CIDR %s (excludeOutboundCidrs)", dst, pfx)})
	}
	if r, ok := matchPort(p.ExcludeOutboundPorts, pkt.Dst.Port()); ok {
		return p.lockdown(pkt, Verdict{Action: Pass, Reason: fmt.Sprintf("port %d is excluded by %s (excludeOutboundPorts)", pkt.Dst.Port(), r)})
	}
	if why, ok := p.notIncluded(dst, pkt.Dst.Port()); !ok {
		return p.lockdown(pkt, Verdict{Action: Pass, Reason: why})
	}
	return p.lockdown(pkt, Verdict{Action: Redirect, Port: p.OutboundPort, Reason: "outbound TCP goes to the proxy's outbound listener"})
}

// lockdown applies egress control to a packet capture let through (or
// redirected: the proxy's own connection to the destination is checked the
// same way when it leaves).
func (p *Plan) lockdown(pkt Packet, v Verdict) Verdict {
	if p.Egress == nil || v.Action == Redirect {
		return v
	}
	dst := pkt.Dst.Addr().Unmap()
	// Loopback and the workload's own addresses (routed over lo) stay
	// reachable: the proxy forwards to the local application that way.
	if dst.IsLoopback() || pkt.Iface == "lo" {
		return v
	}
	if (pkt.Dst.Port() == 53) && slices.Contains(p.DNSServersOf(dst.Is6()), dst) {
		v.Reason += fmt.Sprintf("; egress to the upstream DNS server %s is allowed", dst)
		return v
	}
	// An endpoint opens its own TCP port only, and is checked before the
	// ranges, as the engines do.
	ep := netip.AddrPortFrom(dst, pkt.Dst.Port())
	if pkt.Proto == "tcp" && slices.ContainsFunc(p.Egress.Endpoints, func(a netip.AddrPort) bool {
		return a.Addr().Unmap() == dst && a.Port() == ep.Port()
	}) {
		v.Reason += fmt.Sprintf("; egress to %s is allowed (an endpoint of the proxy)", ep)
		return v
	}
	if pfx, ok := matchPrefix(p.Egress.Allowed, dst); ok {
		v.Reason += fmt.Sprintf("; egress to %s is allowed (%s)", dst, pfx)
		return v
	}
	if pfx, ok := matchPrefix(p.MeshCIDRs, dst); ok {
		v.Reason += fmt.Sprintf("; egress to %s is allowed (mesh CIDR %s)", dst, pfx)
		return v
	}
	return Verdict{Action: Reject, Reason: fmt.Sprintf("passthrough is disabled and %s %s is not a mesh destination, an allowed endpoint or an upstream DNS server", pkt.Proto, ep)}
}

func isLocalhost(a netip.Addr) bool {
	return a == netip.MustParseAddr("127.0.0.1") || a == netip.IPv6Loopback()
}

func matchPrefix(l []netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	a = a.Unmap()
	for _, p := range l {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func matchPort(l []PortRange, port uint16) (PortRange, bool) {
	for _, r := range l {
		if r.Contains(port) {
			return r, true
		}
	}
	return PortRange{}, false
}

func anyPort(l []PortRange, port uint16) bool { _, ok := matchPort(l, port); return ok }

func anyID(l []IDRange, id uint32) bool {
	for _, r := range l {
		if r.Contains(id) {
			return true
		}
	}
	return false
}

package nftables

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/shunt-dev/shunt/redirect"
)

// TableName is shunt's one table, in the inet family: both IP families
// share its base chains, which hand each packet to the chain of its family.
const TableName = "shunt"

// Hook priorities: those of iptables' tables, so that shunt's rules run
// where the iptables engine's would among other tools' chains. nat at
// dstnat (-100) as iptables' nat PREROUTING and OUTPUT; conntrack zones at
// raw (-300), before conntrack (-200) looks the packet up; lockdown at
// filter (0), after nat has redirected what it captures.
//
// Except that nat is one off dstnat. Between nat chains of equal priority
// the kernel runs the one registered last first, and the first to NAT a
// connection wins, so at -100 the order beside kube-proxy's nftables mode
// and Docker (both DNAT at dstnat) depended on which table was created
// last. The output chain runs at dstnat-1: capture sees the address the
// application dialed (a ClusterIP, as in a pod) even when kube-proxy
// re-creates its table after shunt's, and the proxy's own connection, not
// captured, is DNATed by them as before. The prerouting chain runs at
// dstnat+1: a connection another tool forwards elsewhere (Docker's
// published ports, kube-proxy's NodePorts) is that tool's, not the
// workload's inbound, whichever table is newer.
const (
	priorityRaw        = -300
	priorityMangle     = -150
	priorityDstNAT     = -100
	priorityOutputNAT  = priorityDstNAT - 1
	priorityInboundNAT = priorityDstNAT + 1
	priorityFilter     = 0
)

// DNS conntrack zones, as the iptables engine uses: the application's
// redirected queries and the interceptor's upstream queries to the same
// nameserver are tracked apart, so an upstream reply never matches the
// application's NAT entry.
const (
	zoneUpstream = 1
	zoneWorkload = 2
)

// hook makes a chain a base chain.
type hook struct {
	typ      nftables.ChainType
	hook     string // "prerouting" or "output"
	priority int32
}

func (h *hook) num() *nftables.ChainHook {
	if h.hook == "prerouting" {
		return nftables.ChainHookPrerouting
	}
	return nftables.ChainHookOutput
}

type rule struct{ terms []term }

func (r rule) String() string {
	parts := make([]string, len(r.terms))
	for i, t := range r.terms {
		parts[i] = t.text
	}
	return strings.Join(parts, " ")
}

func (r rule) exprs() []expr.Any {
	var out []expr.Any
	for _, t := range r.terms {
		out = append(out, t.exprs...)
	}
	return out
}

type chain struct {
	name  string
	base  *hook
	rules []rule
}

func (c *chain) add(terms ...term) { c.rules = append(c.rules, rule{terms: terms}) }

// Ruleset is shunt's table as rendered from a plan: what install sends in
// one batch and what --dry-run prints.
type Ruleset struct {
	sets   []*set
	chains []*chain
}

func (rs *Ruleset) addSet(s *set) *set {
	s.id = uint32(len(rs.sets) + 1)
	rs.sets = append(rs.sets, s)
	return s
}

func (rs *Ruleset) addChain(name string, h *hook) *chain {
	c := &chain{name: name, base: h}
	rs.chains = append(rs.chains, c)
	return c
}

// families returns the families a plan captures.
func families(p *redirect.Plan) []fam {
	if p.IPFamily == redirect.FamilyIPv4 {
		return []fam{v4}
	}
	return []fam{v4, v6}
}

// Render returns the table a plan installs.
func Render(p *redirect.Plan) *Ruleset {
	rs := &Ruleset{}
	fams := families(p)

	guarded := rs.addSet(newPortSet("guarded_tcp_ports", guardedTCPPorts(p)))
	var inPorts *set
	if p.CaptureInbound {
		inPorts = rs.addSet(newPortSet("exclude_inbound_ports", portRanges(p.ExcludeInboundPorts)))
	}
	outPorts := rs.addSet(newPortSet("exclude_outbound_ports", portRanges(p.ExcludeOutboundPorts)))
	var incInPorts, incOutPorts *set
	if p.CaptureInbound && len(p.IncludeInboundPorts) > 0 {
		incInPorts = rs.addSet(newPortSet("include_inbound_ports", portRanges(p.IncludeInboundPorts)))
	}
	if len(p.IncludeOutboundPorts) > 0 {
		incOutPorts = rs.addSet(newPortSet("include_outbound_ports", portRanges(p.IncludeOutboundPorts)))
	}
	type famSets struct {
		exIn, exOut, dns, mesh, allowed, endpoints *set
		inc                                        include
	}
	sets := map[fam]*famSets{}
	for _, f := range fams {
		s := &famSets{inc: include{ports: incOutPorts}}
		if len(p.IncludeOutboundCIDRs) > 0 {
			// Also when the family has none: the capture rule then
			// matches nothing, as the plan says, and adding one later
			// is an element change.
			s.inc.cidrs = rs.addSet(newAddrSet("include_outbound"+f.suffix(), f, p.IncludeOutboundCIDRs))
		}
		if p.CaptureInbound {
			s.exIn = rs.addSet(newAddrSet("exclude_inbound"+f.suffix(), f, p.ExcludeInboundCIDRs))
		}
		s.exOut = rs.addSet(newAddrSet("exclude_outbound"+f.suffix(), f, p.ExcludeOutboundCIDRs))
		if servers := p.DNSServersOf(f.v6); len(servers) > 0 {
			s.dns = rs.addSet(newHostSet("dns"+f.suffix(), f, servers))
		}
		if p.Egress != nil {
			s.mesh = rs.addSet(newAddrSet("mesh"+f.suffix(), f, p.MeshCIDRs))
			s.allowed = rs.addSet(newAddrSet("allowed"+f.suffix(), f, p.Egress.Allowed))
			s.endpoints = rs.addSet(newEndpointSet("endpoints"+f.suffix(), f, p.Egress.Endpoints))
		}
		sets[f] = s
	}

	// Base chains first, then each family's chains, so the table reads
	// from the hooks down.
	var pre *chain
	redirectIn := p.CaptureInbound && p.InboundTProxy == nil
	if redirectIn || len(p.VNets) > 0 {
		pre = rs.addChain("prerouting", &hook{nftables.ChainTypeNAT, "prerouting", priorityInboundNAT})
	}
	out := rs.addChain("output", &hook{nftables.ChainTypeNAT, "output", priorityOutputNAT})
	zones := map[fam]bool{}
	for _, f := range fams {
		zones[f] = p.DNSMode == redirect.DNSAll || p.DNSMode == redirect.DNSResolvers && sets[f].dns != nil
	}
	var rawPre, rawOut *chain
	if zones[v4] || zones[v6] {
		rawPre = rs.addChain("raw_prerouting", &hook{nftables.ChainTypeFilter, "prerouting", priorityRaw})
		rawOut = rs.addChain("raw_output", &hook{nftables.ChainTypeFilter, "output", priorityRaw})
	}
	// Dropping invalid packets and TPROXY run where iptables' mangle
	// table does: after conntrack (-200) has classified the packet, before
	// nat.
	var manglePre, mangleOut *chain
	if p.DropInvalid || p.InboundTProxy != nil {
		manglePre = rs.addChain("mangle_prerouting", &hook{nftables.ChainTypeFilter, "prerouting", priorityMangle})
	}
	if p.InboundTProxy != nil {
		// A route chain: changing the mark of a locally sent packet
		// routes it again, as iptables' mangle OUTPUT does.
		mangleOut = rs.addChain("mangle_output", &hook{nftables.ChainTypeRoute, "output", priorityMangle})
	}
	// The port guard and lockdown share the filter output hook, in the
	// iptables engine's order (its filter OUTPUT jumps).
	filterOut := rs.addChain("filter_output", &hook{nftables.ChainTypeFilter, "output", priorityFilter})
	filterOut.add(jump("port_guard"))
	// The lockdown again, in a base chain of its own: flushing
	// filter_output (or one family's egress chain) would let everything
	// out until the agent repairs it. Later than filter_output, so it
	// sees only what the lockdown let through, which it lets through too.
	// The port guard too, for the same reason.
	backstop := rs.addChain("filter_output_backstop", &hook{nftables.ChainTypeFilter, "output", priorityFilter + 10})
	backstop.add(jump("port_guard_backstop"))
	if p.DropInvalid {
		for _, f := range fams {
			manglePre.add(logged(p.PacketLog, "drop-invalid", metaNfproto(f), ctInvalid(), drop())...)
		}
	}
	for _, f := range fams {
		if redirectIn {
			pre.add(metaNfproto(f), l4proto("tcp"), jump("inbound"+f.suffix()))
		}
		if len(p.VNets) > 0 {
			pre.add(metaNfproto(f), jump("vnet"+f.suffix()))
		}
		if p.InboundTProxy != nil {
			manglePre.add(metaNfproto(f), l4proto("tcp"), jump("tproxy_inbound"+f.suffix()))
			mangleOut.add(metaNfproto(f), l4proto("tcp"), jump("tproxy_output"))
		}
		out.add(metaNfproto(f), jump("output"+f.suffix()))
		if zones[f] {
			rawOut.add(metaNfproto(f), l4proto("udp"), jump("dns_zone_out"+f.suffix()))
			rawPre.add(metaNfproto(f), l4proto("udp"), jump("dns_zone_in"+f.suffix()))
		}
		if p.Egress != nil {
			filterOut.add(metaNfproto(f), jump("egress"+f.suffix()))
			backstop.add(metaNfproto(f), jump("egress_backstop"+f.suffix()))
		}
	}

	renderPortGuard(rs.addChain("port_guard", nil), p, guarded)
	renderPortGuard(rs.addChain("port_guard_backstop", nil), p, guarded)
	if p.InboundTProxy != nil {
		renderTProxyOutput(rs.addChain("tproxy_output", nil), p.InboundTProxy)
	}
	for _, f := range fams {
		s := sets[f]
		if redirectIn {
			c := rs.addChain("inbound"+f.suffix(), nil)
			renderInboundReturns(c, p, f, s.exIn, inPorts)
			c.add(logged(p.PacketLog, "in-redirect", inboundTCP(incInPorts), redirectTo(p.InboundPort))...)
		}
		if p.InboundTProxy != nil {
			c := rs.addChain("tproxy_inbound"+f.suffix(), nil)
			renderInboundReturns(c, p, f, s.exIn, inPorts)
			// Packets of connections already set up find their socket
			// by address: the destination is local. That keeps
			// connections the application accepted before the install
			// with the application.
			c.add(l4proto("tcp"), ctEstablished(), ret())
			c.add(logged(p.PacketLog, "in-tproxy", inboundTCP(incInPorts), tproxyTo(f, p.InboundPort, p.InboundTProxy.Mark))...)
		}
		renderOutput(rs.addChain("output"+f.suffix(), nil), p, f, s.exOut, outPorts, s.dns, s.inc)
		if len(p.VNets) > 0 {
			renderVNets(rs.addChain("vnet"+f.suffix(), nil), p, f, s.dns, s.inc)
		}
		if zones[f] {
			zin := &chain{name: "dns_zone_in" + f.suffix()}
			zout := rs.addChain("dns_zone_out"+f.suffix(), nil)
			rs.chains = append(rs.chains, zin)
			renderVNetZones(zin, p, f, s.dns)
			renderZones(zout, zin, p, f, s.dns)
		}
		if p.Egress != nil {
			c := rs.addChain("egress"+f.suffix(), nil)
			renderEgress(c, p, f, s.mesh, s.allowed, s.endpoints, s.dns)
			renderEgressGap(rs.addChain("egress_gap"+f.suffix(), nil), p, f, s.exOut, outPorts, s.dns, s.inc)
		}
	}
	if p.Egress != nil {
		for _, f := range fams {
			s := sets[f]
			renderEgress(rs.addChain("egress_backstop"+f.suffix(), nil), p, f, s.mesh, s.allowed, s.endpoints, s.dns)
		}
	}
	logLockdown(rs, p.PacketLog)
	return rs
}

// renderEgress writes one family's lockdown chain (and its backstop's,
// the same rules).
func renderEgress(c *chain, p *redirect.Plan, f fam, mesh, allowed, endpoints, dns *set) {
	c.add(ifname(false, "lo"), ret())
	if f.v6 {
		// Neighbour discovery runs through the output hook
		// too, to multicast addresses no plan allows and
		// untracked by conntrack: refused, no IPv6 address
		// on the link would be reachable, allowed ones
		// included. MLD reports keep snooping bridges
		// delivering solicitations. Only the hop limits the
		// RFCs require pass, as in the iptables engine.
		for _, m := range []struct {
			name    string
			typ, hl byte
		}{
			{"nd-router-solicit", 133, 255}, {"nd-router-advert", 134, 255},
			{"nd-neighbor-solicit", 135, 255}, {"nd-neighbor-advert", 136, 255},
			{"nd-redirect", 137, 255},
			{"mld-listener-report", 131, 1}, {"mld-listener-done", 132, 1},
			{"mld2-listener-report", 143, 1},
		} {
			c.add(icmpv6TypeHopLimit(m.name, m.typ, m.hl), ret())
		}
	}
	// What capture redirected still carries the interface its
	// first route chose: recognise it by its NAT state.
	c.add(ctDNAT(), ret())
	// Connections allowed when they started survive a plan change.
	c.add(ctEstablished(), ret())
	// A new TCP connection capture redirects that carries no
	// NAT state went around the proxy while the output chain
	// is gone (flushed, being repaired): reset it, allowed
	// destination or not, until the redirect is back.
	c.add(l4proto("tcp"), ctNew(), jump("egress_gap"+f.suffix()))
	// So is a DNS query over UDP that capture sends to the
	// interceptor: it would reach the nameserver, which the
	// allow list lets through for the proxy and shunt.
	for _, dst := range dnsCaptured(p, f, dns) {
		c.add(append(dst, port("udp", true, portRange{53, 53}), ctNew(), jump("egress_gap"+f.suffix()))...)
	}
	c.add(addrIn(f, false, mesh), ret())
	c.add(addrIn(f, false, allowed), ret())
	// An endpoint of the proxy opens its TCP port, not its host.
	c.add(endpointIn(f, endpoints), ret())
	if dns != nil {
		c.add(addrIn(f, false, dns), port("udp", true, portRange{53, 53}), ret())
		c.add(addrIn(f, false, dns), port("tcp", true, portRange{53, 53}), ret())
	}
	c.add(l4proto("tcp"), rejectTCPReset())
	c.add(rejectUnreachable(f))
}

func localhost(f fam) netip.Addr {
	if f.v6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

func passthroughSource(f fam) netip.Addr {
	if f.v6 {
		return redirect.InboundPassthroughV6
	}
	return redirect.InboundPassthroughV4
}

// renderOutput writes the outbound chain of one family, rule for rule in
// the iptables engine's order.
func renderOutput(c *chain, p *redirect.Plan, f fam, exOut, outPorts, dns *set, inc include) {
	for _, ifc := range p.ExcludeInterfaces {
		c.add(ifname(false, ifc), ret())
	}
	if p.BypassMark != 0 {
		c.add(mark(p.BypassMark, false), ret())
	}
	if t := p.InboundTProxy; t != nil {
		// The proxy's connections to the application from the client's
		// address: inbound traffic already, not to be captured again.
		c.add(mark(t.Mark, false), ret())
	}
	c.add(addr(f, true, false, passthroughSource(f)), ifname(false, "lo"), ret())
	uid := idRange{p.ProxyUID, p.ProxyUID}
	if p.CaptureInbound {
		// The proxy connecting to a local address other than localhost
		// reaches the workload through inbound capture.
		c.add(logged(p.PacketLog, "in-redirect", addr(f, false, true, localhost(f)), ifname(false, "lo"), l4proto("tcp"), skid(false, uid, false), redirectTo(p.InboundPort))...)
	}
	c.add(skid(false, uid, false), ret())
	if p.ProxyGID != nil {
		c.add(skid(true, idRange{*p.ProxyGID, *p.ProxyGID}, false), ret())
	}
	renderUIDPortExclusions(c, p)
	renderDNSRedirects(c, p, f, dns)
	c.add(ifname(false, "lo"), ret())
	c.add(addrIn(f, false, exOut), ret())
	c.add(portIn("tcp", true, outPorts), ret())
	outboundCapture(c, f, inc, nil, p.PacketLog, "out-redirect", redirectTo(p.OutboundPort))
}

// renderEgressGap writes the output chain's outbound TCP decision without
// its NAT: what it would redirect is reset, what it leaves alone (the
// proxy's own, excluded) returns to the allow list.
func renderEgressGap(c *chain, p *redirect.Plan, f fam, exOut, outPorts, dns *set, inc include) {
	for _, ifc := range p.ExcludeInterfaces {
		c.add(ifname(false, ifc), ret())
	}
	if p.BypassMark != 0 {
		c.add(mark(p.BypassMark, false), ret())
	}
	if t := p.InboundTProxy; t != nil {
		c.add(mark(t.Mark, false), ret())
	}
	c.add(skid(false, idRange{p.ProxyUID, p.ProxyUID}, false), ret())
	if p.ProxyGID != nil {
		c.add(skid(true, idRange{*p.ProxyGID, *p.ProxyGID}, false), ret())
	}
	renderUIDPortExclusions(c, p)
	// DNS capture comes before the exclusions, as in the output chain: a
	// query it would send to the interceptor is refused at once, over UDP
	// with the port-unreachable of a closed port, so the resolver gives up
	// (or tries its next server, refused alike) instead of waiting.
	for _, dst := range dnsCaptured(p, f, dns) {
		c.add(append(dst, port("udp", true, portRange{53, 53}), rejectUnreachable(f))...)
		c.add(append(dst, port("tcp", true, portRange{53, 53}), rejectTCPReset())...)
	}
	c.add(ifname(false, "lo"), ret())
	c.add(addrIn(f, false, exOut), ret())
	c.add(portIn("tcp", true, outPorts), ret())
	outboundCapture(c, f, inc, nil, nil, "", rejectTCPReset())
}

// dnsCaptured returns the destination match of each port-53 rule DNS
// capture writes for a family (an empty match: any destination), none when
// DNS is not captured or the family has no nameserver.
func dnsCaptured(p *redirect.Plan, f fam, dns *set) [][]term {
	switch {
	case p.DNSMode == redirect.DNSAll:
		return [][]term{nil}
	case p.DNSMode == redirect.DNSResolvers && dns != nil:
		return [][]term{{addrIn(f, false, dns)}}
	}
	return nil
}

// renderZones writes the conntrack-zone split of DNS for one family. As
// with iptables' CT target, setting a zone does not end the chain.
func renderZones(out, in *chain, p *redirect.Plan, f fam, dns *set) {
	out.add(port("udp", false, portRange{p.DNSPort, p.DNSPort}), ctZone(zoneWorkload))
	dst := func(terms ...term) []term {
		if p.DNSMode == redirect.DNSResolvers {
			return append([]term{addrIn(f, false, dns)}, terms...)
		}
		return terms
	}
	uid := idRange{p.ProxyUID, p.ProxyUID}
	dns53 := port("udp", true, portRange{53, 53})
	out.add(dst(dns53, skid(false, uid, false), ctZone(zoneUpstream))...)
	if p.BypassMark != 0 {
		out.add(dst(dns53, mark(p.BypassMark, false), ctZone(zoneUpstream))...)
		out.add(dst(dns53, skid(false, uid, true), mark(p.BypassMark, true), ctZone(zoneWorkload))...)
	} else {
		out.add(dst(dns53, skid(false, uid, true), ctZone(zoneWorkload))...)
	}
	src := []term{}
	if p.DNSMode == redirect.DNSResolvers {
		src = append(src, addrIn(f, true, dns))
	}
	in.add(append(src, port("udp", false, portRange{53, 53}), ctZone(zoneUpstream))...)
}

// guardedTCPPorts are the ports capture redirects TCP to, and the admin
// endpoint's.
func guardedTCPPorts(p *redirect.Plan) []portRange {
	out := []portRange{{p.OutboundPort, p.OutboundPort}}
	if p.CaptureInbound {
		out = append(out, portRange{p.InboundPort, p.InboundPort})
	}
	if p.DNSMode != redirect.DNSNone {
		out = append(out, portRange{p.DNSPort, p.DNSPort})
	}
	if p.AdminPort != 0 {
		// Nothing is captured to the admin endpoint, but probes trust
		// what answers there.
		out = append(out, portRange{p.AdminPort, p.AdminPort})
	}
	return out
}

// renderPortGuard drops what a socket not owned by root, the proxy's UID
// or GID, or a process allowed to set the bypass mark, sends from a port
// capture redirects to: a process of the pod that binds such a port while
// the proxy or the agent is down receives the captured traffic, but its
// answers go no further, so the workload's connections and lookups fail
// instead of being served by an impostor. Packets the kernel sends with no
// process's socket (a reset from a closed port) pass, as with iptables'
// "! --socket-exists": loading meta skuid fails for them, so a rule that
// matches on it does not match (the "skuid != 0" below is that test; UID 0
// has returned already).
func renderPortGuard(c *chain, p *redirect.Plan, guarded *set) {
	c.add(skid(false, idRange{0, 0}, false), ret())
	c.add(skid(false, idRange{p.ProxyUID, p.ProxyUID}, false), ret())
	if p.ProxyGID != nil {
		c.add(skid(true, idRange{*p.ProxyGID, *p.ProxyGID}, false), ret())
	}
	if p.BypassMark != 0 {
		c.add(mark(p.BypassMark, false), ret())
	}
	c.add(portIn("tcp", false, guarded), skid(false, idRange{0, 0}, true), drop())
	if p.DNSMode != redirect.DNSNone {
		c.add(port("udp", false, portRange{p.DNSPort, p.DNSPort}), skid(false, idRange{0, 0}, true), drop())
	}
}

func portRanges(l []redirect.PortRange) []portRange {
	out := make([]portRange, len(l))
	for i, r := range l {
		out[i] = portRange{r.First, r.Last}
	}
	return out
}

// String renders the table in nft -f syntax. Loaded with nft -f, it
// replaces shunt's table as install does: created if absent, deleted, and
// written again, in one transaction.
func (rs *Ruleset) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", TableName, TableName)
	b.WriteString(rs.Body())
	return b.String()
}

// Body is the table definition alone.
func (rs *Ruleset) Body() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	for _, s := range rs.sets {
		b.WriteString(s.String())
	}
	for _, c := range rs.chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.name)
		if h := c.base; h != nil {
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy accept;\n", h.typ, h.hook, h.priority)
		}
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// renderUIDPortExclusions returns, before any redirect, the outbound ports
// excluded for given UIDs: the output chain and the egress gap must leave
// exactly the same sockets alone.
func renderUIDPortExclusions(c *chain, p *redirect.Plan) {
	for _, e := range p.ExcludeOutboundPortsForUIDs {
		protos := []string{e.Protocol}
		if e.Protocol == "all" {
			protos = []string{"tcp", "udp"}
		}
		for _, proto := range protos {
			for _, pr := range portRanges(e.Ports) {
				for _, u := range e.UIDs {
					c.add(port(proto, true, pr), skid(false, idRange{u.First, u.Last}, false), ret())
				}
			}
		}
	}
}

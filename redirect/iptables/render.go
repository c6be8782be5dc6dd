package iptables

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/shunt-dev/shunt/redirect"
)

// Chains shunt owns. Names are fixed so that an upgrade finds the chains
// of the previous version.
const (
	chainInbound         = "SHUNT_INBOUND"
	chainInboundRedirect = "SHUNT_INBOUND_REDIRECT"
	chainOutput          = "SHUNT_OUTPUT"
	chainOutRedirect     = "SHUNT_OUTBOUND_REDIRECT"
	chainDNSZoneOut      = "SHUNT_DNS_ZONE_OUT"
	chainDNSZoneIn       = "SHUNT_DNS_ZONE_IN"
	chainEgress          = "SHUNT_EGRESS"
	chainPortGuard       = "SHUNT_PORT_GUARD"
	chainEgressGap       = "SHUNT_EGRESS_GAP"
	chainEgressBackstop  = "SHUNT_EGRESS_BACKSTOP"
)

// DNS conntrack zones. The application's queries to a nameserver are
// redirected to the interceptor, and the interceptor queries the same
// nameserver from the same namespace: were both tracked in one zone, an
// upstream reply could match the application's NAT entry and be un-NATed to
// the wrong socket. Separate zones keep the two flows apart.
const (
	zoneUpstream = 1
	zoneWorkload = 2
)

// multiportMax is how many ports one multiport match takes (a range counts
// as two).
const multiportMax = 15

// Render returns shunt's rules for one family.
func Render(p *redirect.Plan, v6 bool) *Ruleset {
	r := &renderer{p: p, v6: v6, rs: newRuleset()}
	if p.DropInvalid {
		r.dropInvalid()
	}
	if p.InboundTProxy != nil {
		r.tproxy()
	}
	r.nat()
	if len(p.VNets) > 0 {
		r.vnets()
	}
	if p.DNSMode != redirect.DNSNone {
		r.dnsZones()
	}
	r.portGuard()
	if p.Egress != nil {
		r.egress()
		r.egressBackstop()
	}
	return r.rs
}

type renderer struct {
	p  *redirect.Plan
	v6 bool
	rs *Ruleset
}

func (r *renderer) jump(table, chain, match, target string) {
	t := r.rs.table(table)
	spec := chain
	if match != "" {
		spec += " " + match
	}
	t.Jumps = append(t.Jumps, spec+" -m comment --comment "+Marker+" -j "+target)
	if _, ok := t.Chains[target]; !ok {
		t.Chains[target] = nil
	}
}

// jumpOnce is jump for a jump several features need.
func (r *renderer) jumpOnce(table, chain, match, target string) {
	if t, ok := r.rs.Tables[table]; ok {
		if _, ok := t.Chains[target]; ok {
			return
		}
	}
	r.jump(table, chain, match, target)
}

func (r *renderer) rule(table, chain string, parts ...string) {
	t := r.rs.table(table)
	var nonEmpty []string
	for _, p := range parts {
		if p != "" {
			nonEmpty = append(nonEmpty, p)
		}
	}
	t.Chains[chain] = append(t.Chains[chain], strings.Join(nonEmpty, " "))
}

func (r *renderer) host(a netip.Addr) string {
	if r.v6 {
		return a.String() + "/128"
	}
	return a.String() + "/32"
}

func (r *renderer) localhost() string {
	if r.v6 {
		return "::1/128"
	}
	return "127.0.0.1/32"
}

func (r *renderer) passthroughSource() string {
	if r.v6 {
		return r.host(redirect.InboundPassthroughV6)
	}
	return r.host(redirect.InboundPassthroughV4)
}

func (r *renderer) nat() {
	p := r.p
	if p.CaptureInbound {
		// The proxy's calls to the workload's own address come here in
		// either inbound mode (see SHUNT_OUTPUT).
		r.logged("nat", chainInboundRedirect, "in-redirect", "", "-p tcp -j REDIRECT --to-ports "+fmt.Sprint(p.InboundPort))
	}
	if p.CaptureInbound && p.InboundTProxy == nil {
		r.jump("nat", "PREROUTING", "-p tcp", chainInbound)
		r.rule("nat", chainInbound, "-i lo -j RETURN")
		for _, ifc := range p.ExcludeInterfaces {
			r.rule("nat", chainInbound, "-i "+ifc+" -j RETURN")
		}
		// Nested workloads' traffic is outbound (SHUNT_VNET), whichever
		// jump comes first.
		for _, v := range p.VNets {
			r.rule("nat", chainInbound, "-i "+v.Interface+" -j RETURN")
		}
		for _, c := range redirect.PrefixesOf(p.ExcludeInboundCIDRs, r.v6) {
			r.rule("nat", chainInbound, "-s "+c.String()+" -j RETURN")
		}
		for _, ports := range multiport(p.ExcludeInboundPorts) {
			r.rule("nat", chainInbound, "-p tcp -m multiport --dports "+ports+" -j RETURN")
		}
		if groups := multiport(p.IncludeInboundPorts); len(groups) > 0 {
			for _, ports := range groups {
				r.rule("nat", chainInbound, "-p tcp -m multiport --dports "+ports+" -j "+chainInboundRedirect)
			}
		} else {
			r.rule("nat", chainInbound, "-p tcp -j "+chainInboundRedirect)
		}
	}

	r.jump("nat", "OUTPUT", "", chainOutput)
	r.logged("nat", chainOutRedirect, "out-redirect", "", "-p tcp -j REDIRECT --to-ports "+fmt.Sprint(p.OutboundPort))
	out := func(parts ...string) { r.rule("nat", chainOutput, parts...) }
	for _, ifc := range p.ExcludeInterfaces {
		out("-o " + ifc + " -j RETURN")
	}
	if p.BypassMark != 0 {
		out(fmt.Sprintf("-m mark --mark %#x -j RETURN", p.BypassMark))
	}
	if t := p.InboundTProxy; t != nil {
		// The proxy's connections to the application from the client's
		// address: inbound traffic already, not to be captured again.
		out(fmt.Sprintf("-m mark --mark %#x -j RETURN", t.Mark))
	}
	out("-s " + r.passthroughSource() + " -o lo -j RETURN")
	uid := fmt.Sprint(p.ProxyUID)
	if p.CaptureInbound {
		out("! -d "+r.localhost()+" -o lo -p tcp -m owner --uid-owner", uid, "-j", chainInboundRedirect)
	}
	out("-m owner --uid-owner", uid, "-j RETURN")
	if p.ProxyGID != nil {
		out("-m owner --gid-owner", fmt.Sprint(*p.ProxyGID), "-j RETURN")
	}
	r.uidPortExclusions(out)
	dnsTo := fmt.Sprintf("-j REDIRECT --to-ports %d", p.DNSPort)
	for _, dst := range r.dnsCaptured() {
		r.logged("nat", chainOutput, "dns-redirect", dst+"-p udp -m udp --dport 53", dnsTo)
		r.logged("nat", chainOutput, "dns-redirect", dst+"-p tcp -m tcp --dport 53", dnsTo)
	}
	out("-o lo -j RETURN")
	for _, c := range redirect.PrefixesOf(p.ExcludeOutboundCIDRs, r.v6) {
		out("-d " + c.String() + " -j RETURN")
	}
	for _, ports := range multiport(p.ExcludeOutboundPorts) {
		out("-p tcp -m multiport --dports " + ports + " -j RETURN")
	}
	r.outboundCapture(chainOutput, "", "-j "+chainOutRedirect)
}

func (r *renderer) dnsZones() {
	p := r.p
	var servers []string
	if p.DNSMode == redirect.DNSResolvers {
		for _, ns := range p.DNSServersOf(r.v6) {
			servers = append(servers, r.host(ns))
		}
		if len(servers) == 0 {
			return
		}
	} else {
		servers = []string{""}
	}
	r.jump("raw", "OUTPUT", "-p udp", chainDNSZoneOut)
	r.jumpOnce("raw", "PREROUTING", "-p udp", chainDNSZoneIn)
	uid := fmt.Sprint(p.ProxyUID)
	// The interceptor's replies to the workload belong with the
	// workload's redirected queries.
	r.rule("raw", chainDNSZoneOut, fmt.Sprintf("-p udp -m udp --sport %d -j CT --zone %d", p.DNSPort, zoneWorkload))
	for _, s := range servers {
		dst, src := "", ""
		if s != "" {
			dst, src = "-d "+s+" ", "-s "+s+" "
		}
		// Upstream queries of the proxy and of shunt itself.
		r.rule("raw", chainDNSZoneOut, fmt.Sprintf("%s-p udp -m udp --dport 53 -m owner --uid-owner %s -j CT --zone %d", dst, uid, zoneUpstream))
		if p.BypassMark != 0 {
			r.rule("raw", chainDNSZoneOut, fmt.Sprintf("%s-p udp -m udp --dport 53 -m mark --mark %#x -j CT --zone %d", dst, p.BypassMark, zoneUpstream))
			r.rule("raw", chainDNSZoneOut, fmt.Sprintf("%s-p udp -m udp --dport 53 -m owner ! --uid-owner %s -m mark ! --mark %#x -j CT --zone %d", dst, uid, p.BypassMark, zoneWorkload))
		} else {
			r.rule("raw", chainDNSZoneOut, fmt.Sprintf("%s-p udp -m udp --dport 53 -m owner ! --uid-owner %s -j CT --zone %d", dst, uid, zoneWorkload))
		}
		r.rule("raw", chainDNSZoneIn, fmt.Sprintf("%s-p udp -m udp --sport 53 -j CT --zone %d", src, zoneUpstream))
	}
}

// portGuard drops what a socket not owned by the proxy's UID or GID, root
// or a process allowed to set the bypass mark sends from a port capture
// redirects to. Another process of the pod can bind such a port while the
// proxy or the agent is down; the captured traffic would reach it, but its
// answers (the SYN-ACK of a TCP connection, a DNS reply) go no further, so
// the workload's connections and lookups fail instead of being served by
// an impostor. Packets the kernel sends with no socket of a process (a
// reset from a closed port) pass: they serve no one.
func (r *renderer) portGuard() {
	p := r.p
	tcp := []redirect.PortRange{{First: p.OutboundPort, Last: p.OutboundPort}}
	if p.CaptureInbound {
		tcp = append(tcp, redirect.PortRange{First: p.InboundPort, Last: p.InboundPort})
	}
	if p.DNSMode != redirect.DNSNone {
		tcp = append(tcp, redirect.PortRange{First: p.DNSPort, Last: p.DNSPort})
	}
	if p.AdminPort != 0 {
		// Nothing is captured to the admin endpoint, but probes (a
		// kubelet's, an operator's curl) trust what answers there.
		tcp = append(tcp, redirect.PortRange{First: p.AdminPort, Last: p.AdminPort})
	}
	// The same chain in the mangle table's OUTPUT too: a flush of the
	// filter table (iptables -F) would otherwise open the ports until the
	// agent, which may be the one that is down, repairs it.
	for _, table := range []string{"filter", "mangle"} {
		r.portGuardIn(table, tcp)
	}
}

func (r *renderer) portGuardIn(table string, tcp []redirect.PortRange) {
	p := r.p
	r.jump(table, "OUTPUT", "", chainPortGuard)
	g := func(parts ...string) { r.rule(table, chainPortGuard, parts...) }
	g("-m owner ! --socket-exists -j RETURN")
	g("-m owner --uid-owner 0 -j RETURN")
	g("-m owner --uid-owner", fmt.Sprint(p.ProxyUID), "-j RETURN")
	if p.ProxyGID != nil {
		g("-m owner --gid-owner", fmt.Sprint(*p.ProxyGID), "-j RETURN")
	}
	if p.BypassMark != 0 {
		g(fmt.Sprintf("-m mark --mark %#x -j RETURN", p.BypassMark))
	}
	for _, ports := range multiport(tcp) {
		g("-p tcp -m multiport --sports " + ports + " -j DROP")
	}
	if p.DNSMode != redirect.DNSNone {
		g(fmt.Sprintf("-p udp -m udp --sport %d -j DROP", p.DNSPort))
	}
}

func (r *renderer) egress() {
	r.jump("filter", "OUTPUT", "", chainEgress)
	e := func(parts ...string) { r.rule("filter", chainEgress, parts...) }
	e("-o lo -j RETURN")
	r.linkPlumbing(e)
	// What capture redirected to the proxy or to the DNS interceptor still
	// carries the interface its first route chose (-o is fixed before the
	// nat hook rewrites the destination): recognise it by its NAT state.
	e("-m conntrack --ctstate DNAT -j RETURN")
	// Connections that were allowed when they started keep going across a
	// plan change. RELATED also lets out the ICMP(v6) errors the stack
	// sends about a tracked flow (port unreachable, packet too big).
	e("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
	// A new TCP connection that capture redirects but that carries no
	// NAT state went around the proxy: the nat rules are gone (flushed,
	// being repaired). Refuse it even to an allowed destination rather
	// than let it out unproxied until the rules come back.
	e("-p tcp -m conntrack --ctstate NEW -j " + chainEgressGap)
	// So is a DNS query over UDP that capture sends to the interceptor:
	// without NAT state it would reach the nameserver, which the allow
	// list below lets through for the proxy and shunt.
	if len(r.dnsCaptured()) > 0 {
		e("-p udp -m udp --dport 53 -m conntrack --ctstate NEW -j " + chainEgressGap)
	}
	r.egressGap()
	r.allowed(e)
	r.logged("filter", chainEgress, "lockdown-reject", "-p tcp", "-j REJECT --reject-with tcp-reset")
	if r.v6 {
		r.logged("filter", chainEgress, "lockdown-reject", "", "-j REJECT --reject-with icmp6-port-unreachable")
	} else {
		r.logged("filter", chainEgress, "lockdown-reject", "", "-j REJECT --reject-with icmp-port-unreachable")
	}
}

// linkPlumbing lets out, under lockdown, what IPv6 needs to reach any
// destination at all.
func (r *renderer) linkPlumbing(e func(parts ...string)) {
	if !r.v6 {
		return
	}
	// Neighbour discovery leaves through OUTPUT too, to
	// solicited-node multicast addresses no plan allows, and
	// conntrack leaves it untracked: refused, no address on the
	// link would resolve, allowed ones included. MLD reports
	// announce those multicast groups to snooping bridges, which
	// otherwise stop delivering solicitations once a querier runs.
	// Only the hop limits RFC 4861 and RFC 3810 require pass (the
	// kernel sends those; receivers drop the others).
	//
	// Router and neighbour solicitation and advertisement, redirect.
	for _, typ := range []int{133, 134, 135, 136, 137} {
		e(fmt.Sprintf("-p ipv6-icmp -m icmp6 --icmpv6-type %d -m hl --hl-eq 255 -j RETURN", typ))
	}
	// MLDv1 report and done, MLDv2 report.
	for _, typ := range []int{131, 132, 143} {
		e(fmt.Sprintf("-p ipv6-icmp -m icmp6 --icmpv6-type %d -m hl --hl-eq 1 -j RETURN", typ))
	}
}

// allowed returns from the lockdown chain what the mesh lets out.
func (r *renderer) allowed(e func(parts ...string)) {
	p := r.p
	for _, c := range redirect.PrefixesOf(p.MeshCIDRs, r.v6) {
		e("-d " + c.String() + " -j RETURN")
	}
	for _, c := range redirect.PrefixesOf(p.Egress.Allowed, r.v6) {
		e("-d " + c.String() + " -j RETURN")
	}
	// An endpoint of the proxy opens its TCP port, not its whole host.
	for _, ep := range redirect.EndpointsOf(p.Egress.Endpoints, r.v6) {
		e(fmt.Sprintf("-d %s -p tcp -m tcp --dport %d -j RETURN", r.host(ep.Addr()), ep.Port()))
	}
	for _, ns := range p.DNSServersOf(r.v6) {
		e("-d " + r.host(ns) + " -p udp -m udp --dport 53 -j RETURN")
		e("-d " + r.host(ns) + " -p tcp -m tcp --dport 53 -j RETURN")
	}
}

// egressBackstop repeats the lockdown in the mangle table's POSTROUTING,
// with DROP (REJECT exists in the filter table only): a flush of the filter
// table (iptables -F) removes SHUNT_EGRESS until the agent repairs it, and
// meanwhile the proxy's own connections, the application's UDP and what
// capture excludes would leave for any destination. POSTROUTING, not
// OUTPUT, because only after the nat hook does a redirected packet carry
// its NAT state. Only packets from a local address: lockdown governs what
// the pod sends, not what it forwards. When the filter rules are in place
// nothing new reaches it that they refuse, so it changes nothing then.
func (r *renderer) egressBackstop() {
	r.jump("mangle", "POSTROUTING", "-m addrtype --src-type LOCAL", chainEgressBackstop)
	e := func(parts ...string) { r.rule("mangle", chainEgressBackstop, parts...) }
	e("-o lo -j RETURN")
	r.linkPlumbing(e)
	e("-m conntrack --ctstate DNAT -j RETURN")
	e("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
	r.allowed(e)
	r.logged("mangle", chainEgressBackstop, "lockdown-drop", "", "-j DROP")
}

// egressGap writes SHUNT_EGRESS_GAP: SHUNT_OUTPUT's outbound TCP decision
// without its NAT, so that what capture would redirect is reset and what it
// leaves alone (excluded, the proxy's own) returns to the allow list.
func (r *renderer) egressGap() {
	p := r.p
	g := func(parts ...string) { r.rule("filter", chainEgressGap, parts...) }
	for _, ifc := range p.ExcludeInterfaces {
		g("-o " + ifc + " -j RETURN")
	}
	if p.BypassMark != 0 {
		g(fmt.Sprintf("-m mark --mark %#x -j RETURN", p.BypassMark))
	}
	if t := p.InboundTProxy; t != nil {
		g(fmt.Sprintf("-m mark --mark %#x -j RETURN", t.Mark))
	}
	g("-m owner --uid-owner", fmt.Sprint(p.ProxyUID), "-j RETURN")
	if p.ProxyGID != nil {
		g("-m owner --gid-owner", fmt.Sprint(*p.ProxyGID), "-j RETURN")
	}
	r.uidPortExclusions(g)
	// DNS capture comes before the exclusions, as in SHUNT_OUTPUT: a query
	// it would send to the interceptor is refused at once, over UDP with
	// the port-unreachable a closed port sends, so the resolver gives up
	// (or tries its next server, refused alike) instead of waiting.
	unreachable := "icmp-port-unreachable"
	if r.v6 {
		unreachable = "icmp6-port-unreachable"
	}
	for _, dst := range r.dnsCaptured() {
		g(dst + "-p udp -m udp --dport 53 -j REJECT --reject-with " + unreachable)
		g(dst + "-p tcp -m tcp --dport 53 -j REJECT --reject-with tcp-reset")
	}
	g("-o lo -j RETURN")
	for _, c := range redirect.PrefixesOf(p.ExcludeOutboundCIDRs, r.v6) {
		g("-d " + c.String() + " -j RETURN")
	}
	for _, ports := range multiport(p.ExcludeOutboundPorts) {
		g("-p tcp -m multiport --dports " + ports + " -j RETURN")
	}
	r.outboundCapture(chainEgressGap, "", "-j REJECT --reject-with tcp-reset")
}

// dnsCaptured returns the destination match ("-d HOST " or "" for any) of
// each port-53 rule DNS capture writes for the family: none when DNS is
// not captured or the family has no nameserver.
func (r *renderer) dnsCaptured() []string {
	switch r.p.DNSMode {
	case redirect.DNSAll:
		return []string{""}
	case redirect.DNSResolvers:
		var out []string
		for _, ns := range r.p.DNSServersOf(r.v6) {
			out = append(out, "-d "+r.host(ns)+" ")
		}
		return out
	}
	return nil
}

// uidPortExclusions returns the outbound ports excluded for given UIDs:
// SHUNT_OUTPUT and the egress gap must leave exactly the same sockets alone.
func (r *renderer) uidPortExclusions(emit func(parts ...string)) {
	for _, e := range r.p.ExcludeOutboundPortsForUIDs {
		for _, proto := range protocols(e.Protocol) {
			for _, ports := range multiport(e.Ports) {
				for _, u := range e.UIDs {
					emit("-p "+proto+" -m multiport --dports "+ports+" -m owner --uid-owner "+u.String(), "-j RETURN")
				}
			}
		}
	}
}

func protocols(p string) []string {
	if p == "all" {
		return []string{"tcp", "udp"}
	}
	return []string{p}
}

// multiport splits port ranges into groups that fit one multiport match,
// written as iptables-save writes them (ranges with a colon).
func multiport(ranges []redirect.PortRange) []string {
	var groups []string
	var cur []string
	n := 0
	for _, pr := range ranges {
		w, s := 1, fmt.Sprint(pr.First)
		if pr.Last != pr.First {
			w, s = 2, fmt.Sprintf("%d:%d", pr.First, pr.Last)
		}
		if n+w > multiportMax {
			groups = append(groups, strings.Join(cur, ","))
			cur, n = nil, 0
		}
		cur = append(cur, s)
		n += w
	}
	if len(cur) > 0 {
		groups = append(groups, strings.Join(cur, ","))
	}
	return groups
}

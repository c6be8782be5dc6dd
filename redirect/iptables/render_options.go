package iptables

import (
	"fmt"

	"github.com/shunt-dev/shunt/redirect"
)

// Chains of the optional features (redirect.Plan.Features).
const (
	chainDropInvalid   = "SHUNT_DROP_INVALID"
	chainTProxyInbound = "SHUNT_TPROXY_INBOUND"
	chainTProxyOutput  = "SHUNT_TPROXY_OUTPUT"
	chainVNet          = "SHUNT_VNET"
)

// logRule returns the rule that logs a packet before the rule that acts on
// it (match is that rule's match, so only the packets it acts on are
// logged), or "" when packet logging is off. The prefix says what the next
// rule does.
func (r *renderer) logRule(match, what string) string {
	l := r.p.PacketLog
	if l == nil {
		return ""
	}
	if match != "" {
		match += " "
	}
	if l.Target == "kernel" {
		// The kernel log has no field separator of its own.
		return fmt.Sprintf(`%s-j LOG --log-prefix "shunt-%s: "`, match, what)
	}
	target := match + "-j NFLOG --nflog-prefix shunt-" + what
	if l.Group != 0 {
		target += fmt.Sprintf(" --nflog-group %d", l.Group) // iptables-save omits group 0
	}
	return target
}

// logged appends to chain the log rule for match (when logging is on) and
// then the rule itself.
func (r *renderer) logged(table, chain, what, match, action string) {
	if l := r.logRule(match, what); l != "" {
		r.rule(table, chain, l)
	}
	if match != "" {
		r.rule(table, chain, match, action)
		return
	}
	r.rule(table, chain, action)
}

// dropInvalid drops what conntrack cannot place in a connection, before
// the nat table would let it through untranslated.
func (r *renderer) dropInvalid() {
	r.jump("mangle", "PREROUTING", "", chainDropInvalid)
	r.logged("mangle", chainDropInvalid, "drop-invalid", "-m conntrack --ctstate INVALID", "-j DROP")
}

// tproxy sends inbound TCP to the proxy's transparent listener in the
// mangle table, and carries the mark of the proxy's original-source
// connections over to the application's replies, which the policy route
// (installed by the engine) then delivers to the local stack.
func (r *renderer) tproxy() {
	p := r.p
	t := p.InboundTProxy
	mark := fmt.Sprintf("%#x", t.Mark)
	r.jump("mangle", "PREROUTING", "-p tcp", chainTProxyInbound)
	in := func(parts ...string) { r.rule("mangle", chainTProxyInbound, parts...) }
	in("-i lo -j RETURN")
	for _, ifc := range p.ExcludeInterfaces {
		in("-i " + ifc + " -j RETURN")
	}
	for _, v := range p.VNets {
		in("-i " + v.Interface + " -j RETURN")
	}
	for _, c := range redirect.PrefixesOf(p.ExcludeInboundCIDRs, r.v6) {
		in("-s " + c.String() + " -j RETURN")
	}
	for _, ports := range multiport(p.ExcludeInboundPorts) {
		in("-p tcp -m multiport --dports " + ports + " -j RETURN")
	}
	// Packets of connections already set up find their socket by address:
	// the destination is local. That keeps connections the application
	// accepted before the install with the application.
	in("-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
	onIP := "0.0.0.0"
	if r.v6 {
		onIP = "::"
	}
	action := fmt.Sprintf("-j TPROXY --on-port %d --on-ip %s --tproxy-mark %s/0xffffffff", p.InboundPort, onIP, mark)
	if groups := multiport(p.IncludeInboundPorts); len(groups) > 0 {
		for _, ports := range groups {
			r.logged("mangle", chainTProxyInbound, "in-tproxy", "-p tcp -m multiport --dports "+ports, action)
		}
	} else {
		r.logged("mangle", chainTProxyInbound, "in-tproxy", "-p tcp", action)
	}

	r.jump("mangle", "OUTPUT", "-p tcp", chainTProxyOutput)
	// The proxy marks its connections to the application from the client's
	// address; the application's replies take the mark from the
	// connection and with it the route back to the proxy.
	r.rule("mangle", chainTProxyOutput, "-m mark --mark "+mark+" -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff")
	r.rule("mangle", chainTProxyOutput, "-m connmark --mark "+mark+" -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff")
}

// vnets treats TCP arriving on a nested VM's or container's interface as
// that workload's outbound traffic, and its DNS as the workload's DNS.
func (r *renderer) vnets() {
	p := r.p
	r.jump("nat", "PREROUTING", "", chainVNet)
	dnsTo := fmt.Sprintf("-j REDIRECT --to-ports %d", p.DNSPort)
	var servers []string
	switch p.DNSMode {
	case redirect.DNSAll:
		servers = []string{""}
	case redirect.DNSResolvers:
		for _, ns := range p.DNSServersOf(r.v6) {
			servers = append(servers, "-d "+r.host(ns)+" ")
		}
	}
	for _, v := range p.VNets {
		for _, s := range servers {
			in := "-i " + v.Interface + " "
			r.logged("nat", chainVNet, "dns-redirect", s+in+"-p udp -m udp --dport 53", dnsTo)
			r.logged("nat", chainVNet, "dns-redirect", s+in+"-p tcp -m tcp --dport 53", dnsTo)
			// The nested workload's queries, like the pod's, are tracked
			// in the zone of the interceptor's replies (see dnsZones).
			r.jumpOnce("raw", "PREROUTING", "-p udp", chainDNSZoneIn)
			r.rule("raw", chainDNSZoneIn, fmt.Sprintf("%s%s-p udp -m udp --dport 53 -j CT --zone %d", s, in, zoneWorkload))
		}
	}
	for _, v := range p.VNets {
		if v.CIDR.IsValid() && v.CIDR.Addr().Is6() == r.v6 {
			r.rule("nat", chainVNet, "-d "+v.CIDR.String()+" -i "+v.Interface+" -j RETURN")
		}
	}
	for _, v := range p.VNets {
		r.outboundCapture(chainVNet, "-i "+v.Interface, "-j "+chainOutRedirect)
	}
}

// outboundCapture appends to chain the rules that send outbound TCP
// matching match to the outbound listener, limited by the include lists:
// to each included CIDR of the family and each group of included ports.
func (r *renderer) outboundCapture(chain, match, action string) {
	p := r.p
	table := "nat"
	if chain == chainEgressGap {
		table = "filter"
	}
	var dsts []string
	if len(p.IncludeOutboundCIDRs) > 0 {
		for _, c := range redirect.PrefixesOf(p.IncludeOutboundCIDRs, r.v6) {
			dsts = append(dsts, "-d "+c.String())
		}
		if len(dsts) == 0 {
			return // none of this family: nothing of it is captured
		}
	} else {
		dsts = []string{""}
	}
	ports := []string{""}
	if groups := multiport(p.IncludeOutboundPorts); len(groups) > 0 {
		ports = groups
	}
	for _, d := range dsts {
		for _, pg := range ports {
			m := ""
			// iptables-save's order: addresses, interfaces, protocol, matches.
			for _, part := range []string{d, match, "-p tcp"} {
				if part != "" {
					if m != "" {
						m += " "
					}
					m += part
				}
			}
			if pg != "" {
				m += " -m multiport --dports " + pg
			}
			r.rule(table, chain, m, action)
		}
	}
}

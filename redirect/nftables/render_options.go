package nftables

import (
	"strings"

	"github.com/shunt-dev/shunt/redirect"
)

// Rendering of the optional capture features (redirect.Plan.Features), in
// the iptables engine's order, rule for rule.

// include holds the include-only sets of one family: outbound TCP is
// captured only to these destinations and ports (nil: all).
type include struct{ cidrs, ports *set }

// outboundCapture adds the rule that sends outbound TCP matching match to
// action, limited by the include-only sets, logged as what when the plan
// logs packets.
func outboundCapture(c *chain, f fam, inc include, match []term, l *redirect.PacketLog, what string, action term) {
	terms := append([]term(nil), match...)
	if inc.cidrs != nil {
		terms = append(terms, addrIn(f, false, inc.cidrs))
	}
	if inc.ports != nil {
		terms = append(terms, portIn("tcp", true, inc.ports))
	} else {
		terms = append(terms, l4proto("tcp"))
	}
	terms = append(terms, action)
	if what != "" {
		terms = logged(l, what, terms...)
	}
	c.add(terms...)
}

// inboundTCP matches the inbound TCP capture takes: all of it, or the
// included ports.
func inboundTCP(incInPorts *set) term {
	if incInPorts != nil {
		return portIn("tcp", true, incInPorts)
	}
	return l4proto("tcp")
}

// renderInboundReturns writes what inbound capture (NAT or TPROXY) leaves
// alone: loopback, excluded interfaces, nested workloads' interfaces (their
// traffic is outbound: see renderVNets), excluded sources and ports.
func renderInboundReturns(c *chain, p *redirect.Plan, f fam, exIn, inPorts *set) {
	c.add(ifname(true, "lo"), ret())
	for _, ifc := range p.ExcludeInterfaces {
		c.add(ifname(true, ifc), ret())
	}
	for _, v := range p.VNets {
		c.add(ifname(true, v.Interface), ret())
	}
	c.add(addrIn(f, true, exIn), ret())
	c.add(portIn("tcp", true, inPorts), ret())
}

// renderDNSRedirects sends DNS matching match (the pod's own: nothing; a
// nested workload's: its interface) to the interceptor, in the plan's DNS
// mode.
func renderDNSRedirects(c *chain, p *redirect.Plan, f fam, dns *set, match ...term) {
	var dst []term
	switch p.DNSMode {
	case redirect.DNSAll:
	case redirect.DNSResolvers:
		if dns == nil {
			return
		}
		dst = []term{addrIn(f, false, dns)}
	default:
		return
	}
	for _, proto := range []string{"udp", "tcp"} {
		terms := append(append(append([]term(nil), match...), dst...), port(proto, true, portRange{53, 53}), redirectTo(p.DNSPort))
		c.add(logged(p.PacketLog, "dns-redirect", terms...)...)
	}
}

// renderTProxyOutput carries the mark of the proxy's original-source
// connections over to the application's replies, which the policy route
// then delivers to the local stack (the proxy) instead of the wire.
func renderTProxyOutput(c *chain, t *redirect.TProxy) {
	c.add(mark(t.Mark, false), ctMarkSave())
	c.add(ctMark(t.Mark), ctMarkRestore())
}

// renderVNets treats TCP arriving on a nested VM's or container's
// interface as that workload's outbound traffic, except to its own
// network, and its DNS as the workload's DNS. The outbound exclusions are
// the pod's sockets' and do not apply, as in the iptables engine.
func renderVNets(c *chain, p *redirect.Plan, f fam, dns *set, inc include) {
	for _, v := range p.VNets {
		renderDNSRedirects(c, p, f, dns, ifname(true, v.Interface))
	}
	for _, v := range p.VNets {
		if v.CIDR.IsValid() && v.CIDR.Addr().Is6() == f.v6 {
			c.add(ifname(true, v.Interface), prefix(f, false, v.CIDR), ret())
		}
	}
	for _, v := range p.VNets {
		outboundCapture(c, f, inc, []term{ifname(true, v.Interface)}, p.PacketLog, "out-redirect", redirectTo(p.OutboundPort))
	}
}

// renderVNetZones puts nested workloads' DNS queries in the zone of the
// interceptor's replies, as the pod's own queries are (see renderZones),
// so that the replies are translated back.
func renderVNetZones(in *chain, p *redirect.Plan, f fam, dns *set) {
	for _, v := range p.VNets {
		terms := []term{ifname(true, v.Interface)}
		if p.DNSMode == redirect.DNSResolvers {
			terms = append(terms, addrIn(f, false, dns))
		}
		in.add(append(terms, port("udp", true, portRange{53, 53}), ctZone(zoneWorkload))...)
	}
}

// logLockdown logs, when the plan logs packets, what the lockdown chains
// refuse: the rejects that end egress4 and egress6.
func logLockdown(rs *Ruleset, l *redirect.PacketLog) {
	if l == nil {
		return
	}
	for _, c := range rs.chains {
		f := v4
		switch c.name {
		case "egress" + v4.suffix():
		case "egress" + v6.suffix():
			f = v6
		default:
			continue
		}
		for i, r := range c.rules {
			n := len(r.terms)
			if n == 0 || !strings.HasPrefix(r.terms[n-1].text, "reject") {
				continue
			}
			terms := r.terms
			if dep := metaNfproto(f); strings.HasPrefix(terms[n-1].text, "reject with icmp") && n == 1 {
				// The ICMP reject depends on the family, and nft puts
				// that dependency at the start of the rule, before the
				// log: so does shunt, in the text too.
				a := terms[0]
				terms = []term{dep, {a.text, a.exprs[len(dep.exprs):]}}
			}
			c.rules[i].terms = logged(l, "lockdown-reject", terms...)
		}
	}
}

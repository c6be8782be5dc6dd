package agent

import (
	"net/netip"
	"slices"
	"sort"

	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/redirect"
)

// desiredPlan is the capture the agent wants in force: the user's plan,
// locked down to the snapshot's destinations when the mesh disables
// passthrough. Without a snapshot nothing is known about passthrough, and
// the user's plan applies as given (Kuma's default is passthrough on).
func desiredPlan(base *redirect.Plan, snap *mesh.AgentSnapshot, resolved map[string][]netip.Addr, vipRanges []netip.Prefix) *redirect.Plan {
	p := base.Clone()
	if snap == nil || snap.Passthrough {
		p.Egress = nil
		return p
	}
	p.Egress = &redirect.Egress{Allowed: allowedRanges(snap, vipRanges), Endpoints: allowedEndpoints(snap, resolved)}
	return p
}

// allowedRanges is what stays open on every port: the VIP ranges, and the
// port-less addresses of a snapshot persisted by an earlier version. Sorted
// and without duplicates, so an unchanged set gives an identical plan.
func allowedRanges(snap *mesh.AgentSnapshot, vipRanges []netip.Prefix) []netip.Prefix {
	set := map[netip.Prefix]bool{}
	for _, p := range snap.AllowedEgress {
		set[p.Masked()] = true
	}
	for _, p := range vipRanges {
		set[p.Masked()] = true
	}
	out := make([]netip.Prefix, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr().Compare(out[j].Addr()); c != 0 {
			return c < 0
		}
		return out[i].Bits() < out[j].Bits()
	})
	return out
}

// allowedEndpoints is the snapshot's cluster endpoints and what its
// DNS-resolved clusters resolve to now, each with its cluster's port: the
// proxy connects to that port, and to no other of the host.
func allowedEndpoints(snap *mesh.AgentSnapshot, resolved map[string][]netip.Addr) []netip.AddrPort {
	set := map[netip.AddrPort]bool{}
	for _, ap := range snap.AllowedEndpoints {
		set[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
	}
	for _, h := range snap.DNSHosts {
		for _, a := range resolved[h.Host] {
			set[netip.AddrPortFrom(a.Unmap(), h.Port)] = true
		}
	}
	out := make([]netip.AddrPort, 0, len(set))
	for ap := range set {
		out = append(out, ap)
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return out
}

// hostsOf lists the distinct hostnames a snapshot asks the agent to resolve.
func hostsOf(snap *mesh.AgentSnapshot) []string {
	if snap == nil || snap.Passthrough {
		return nil
	}
	// A set, not a search per host: ten thousand ExternalServices give
	// ten thousand hosts.
	hosts := make([]string, 0, len(snap.DNSHosts))
	for _, h := range snap.DNSHosts {
		hosts = append(hosts, h.Host)
	}
	sort.Strings(hosts)
	return slices.Compact(hosts)
}

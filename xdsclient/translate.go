package xdsclient

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnstablev3 "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/shunt-dev/shunt/mesh"
)

// DNSFilterName is the UDP listener filter whose DnsTable holds the names
// the mesh answers.
const DNSFilterName = "envoy.filters.udp.dns_filter"

// dnsFilterTypeURL identifies the filter by its config type, for servers
// that give it another name.
const dnsFilterTypeURL = "type.googleapis.com/envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig"

// Translate distils listeners, clusters and the load assignments of EDS
// clusters into an agent snapshot. Every resource is checked with its
// proto's validation rules first; an error names the resource and what is
// wrong with it. Version and ReceivedAt are left for the caller.
func Translate(listeners []*listenerv3.Listener, clusters []*clusterv3.Cluster, endpoints []*endpointv3.ClusterLoadAssignment) (*mesh.AgentSnapshot, error) {
	ls := make([]*listenerEntry, len(listeners))
	for i, l := range listeners {
		ls[i] = newListenerEntry(l)
	}
	cs := make([]*clusterEntry, len(clusters))
	for i, c := range clusters {
		cs[i] = newClusterEntry(c)
	}
	es := make([]*endpointEntry, len(endpoints))
	for i, e := range endpoints {
		es[i] = newEndpointEntry(e)
	}
	return compose(ls, cs, es)
}

// The entries below are what one resource contributes to a snapshot, or
// why it cannot. They depend on the resource's bytes alone, so the stream
// keeps them by the hash of those bytes and a response that repeats most
// of the previous one (the usual case: one service changed among
// thousands) costs the decoding and validation of what changed only.

// dnsName is one name of a listener's DNS tables with its addresses in
// order, without duplicates.
type dnsName struct {
	name  string
	addrs []netip.Addr
}

type listenerEntry struct {
	name  string
	names []dnsName
	err   error
}

func newListenerEntry(l *listenerv3.Listener) *listenerEntry {
	e := &listenerEntry{name: l.GetName()}
	if err := l.ValidateAll(); err != nil {
		e.err = fmt.Errorf("listener %s: %w", l.GetName(), err)
		return e
	}
	names := map[string][]netip.Addr{}
	var order []string
	if err := addDNSTables(names, &order, l); err != nil {
		e.err = fmt.Errorf("listener %s: %w", l.GetName(), err)
		return e
	}
	if len(order) > 0 {
		e.names = make([]dnsName, len(order))
		for i, n := range order {
			e.names[i] = dnsName{name: n, addrs: slices.Clip(names[n])}
		}
	}
	return e
}

type clusterEntry struct {
	name        string
	passthrough bool
	// eds is the service name of an EDS cluster, whose endpoints come
	// from its assignment.
	eds    string
	isEDS  bool
	egress []netip.AddrPort
	hosts  []mesh.DNSHost
	err    error
}

func newClusterEntry(c *clusterv3.Cluster) *clusterEntry {
	e := &clusterEntry{name: c.GetName()}
	if err := c.ValidateAll(); err != nil {
		e.err = fmt.Errorf("cluster %s: %w", c.GetName(), err)
		return e
	}
	egress := map[netip.AddrPort]struct{}{}
	hosts := map[mesh.DNSHost]struct{}{}
	var err error
	switch c.GetType() {
	case clusterv3.Cluster_ORIGINAL_DST:
		// A custom cluster_type also reads as ORIGINAL_DST (the zero
		// value) through GetType; only a real one means passthrough.
		if _, ok := c.GetClusterDiscoveryType().(*clusterv3.Cluster_Type); ok {
			e.passthrough = true
		}
	case clusterv3.Cluster_STATIC:
		err = addEndpoints(egress, nil, c.GetLoadAssignment(), false)
	case clusterv3.Cluster_EDS:
		e.isEDS = true
		e.eds = c.GetEdsClusterConfig().GetServiceName()
		if e.eds == "" {
			e.eds = c.GetName()
		}
	case clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		err = addEndpoints(egress, hosts, c.GetLoadAssignment(), true)
	}
	if err != nil {
		e.err = fmt.Errorf("cluster %s: %w", c.GetName(), err)
		return e
	}
	for p := range egress {
		e.egress = append(e.egress, p)
	}
	for h := range hosts {
		e.hosts = append(e.hosts, h)
	}
	return e
}

type endpointEntry struct {
	name string
	// err is the assignment's own validation error; addErr is what makes
	// its endpoints unusable for an EDS cluster.
	err    error
	egress []netip.AddrPort
	addErr error
}

func newEndpointEntry(a *endpointv3.ClusterLoadAssignment) *endpointEntry {
	e := &endpointEntry{name: a.GetClusterName()}
	if err := a.ValidateAll(); err != nil {
		e.err = fmt.Errorf("endpoints %s: %w", a.GetClusterName(), err)
		return e
	}
	egress := map[netip.AddrPort]struct{}{}
	if err := addEndpoints(egress, nil, a, false); err != nil {
		e.addErr = err
		return e
	}
	for p := range egress {
		e.egress = append(e.egress, p)
	}
	return e
}

// compose merges the entries into a snapshot, reporting the first error in
// the order a full translation meets them: listeners, assignments, clusters.
func compose(listeners []*listenerEntry, clusters []*clusterEntry, endpoints []*endpointEntry) (*mesh.AgentSnapshot, error) {
	size := 0
	for _, l := range listeners {
		if l.err != nil {
			return nil, l.err
		}
		size += len(l.names)
	}
	snap := &mesh.AgentSnapshot{Names: make(map[string][]netip.Addr, size)}
	for _, l := range listeners {
		for _, n := range l.names {
			prev, ok := snap.Names[n.name]
			if !ok {
				// Entries are never changed once built, so the snapshot
				// may share their lists.
				snap.Names[n.name] = n.addrs
				continue
			}
			merged := prev
			for _, a := range n.addrs {
				if !slices.Contains(merged, a) {
					if len(merged) == len(prev) {
						merged = slices.Clone(prev)
					}
					merged = append(merged, a)
				}
			}
			snap.Names[n.name] = slices.Clip(merged)
		}
	}

	cla := make(map[string]*endpointEntry, len(endpoints))
	for _, e := range endpoints {
		if e.err != nil {
			return nil, e.err
		}
		cla[e.name] = e
	}

	egress := map[netip.AddrPort]struct{}{}
	hosts := map[mesh.DNSHost]struct{}{}
	for _, c := range clusters {
		if c.err != nil {
			return nil, c.err
		}
		if c.passthrough {
			snap.Passthrough = true
		}
		if c.isEDS {
			// A missing assignment is a cluster with no endpoints yet,
			// as Envoy treats it.
			if a := cla[c.eds]; a != nil {
				if a.addErr != nil {
					return nil, fmt.Errorf("cluster %s: EDS service %s: %w", c.name, c.eds, a.addErr)
				}
				for _, p := range a.egress {
					egress[p] = struct{}{}
				}
			}
		}
		for _, p := range c.egress {
			egress[p] = struct{}{}
		}
		for _, h := range c.hosts {
			hosts[h] = struct{}{}
		}
	}

	for p := range egress {
		snap.AllowedEndpoints = append(snap.AllowedEndpoints, p)
	}
	slices.SortFunc(snap.AllowedEndpoints, netip.AddrPort.Compare)
	for h := range hosts {
		snap.DNSHosts = append(snap.DNSHosts, h)
	}
	slices.SortFunc(snap.DNSHosts, func(a, b mesh.DNSHost) int {
		return cmp.Or(cmp.Compare(a.Host, b.Host), cmp.Compare(a.Port, b.Port))
	})
	return snap, nil
}

func addDNSTables(names map[string][]netip.Addr, order *[]string, l *listenerv3.Listener) error {
	for _, f := range l.GetListenerFilters() {
		tc := f.GetTypedConfig()
		if f.GetName() != DNSFilterName && tc.GetTypeUrl() != dnsFilterTypeURL {
			continue
		}
		if tc == nil {
			return fmt.Errorf("dns_filter config: missing typed_config")
		}
		var cfg dnsfilterv3.DnsFilterConfig
		if err := tc.UnmarshalTo(&cfg); err != nil {
			return fmt.Errorf("dns_filter config: %w", err)
		}
		if err := cfg.ValidateAll(); err != nil {
			return fmt.Errorf("dns_filter config: %w", err)
		}
		table, err := dnsTable(cfg.GetServerConfig())
		if err != nil {
			return fmt.Errorf("dns_filter config: %w", err)
		}
		if err := addTable(names, order, table); err != nil {
			return fmt.Errorf("dns_filter config: %w", err)
		}
	}
	return nil
}

func dnsTable(sc *dnsfilterv3.DnsFilterConfig_ServerContextConfig) (*dnstablev3.DnsTable, error) {
	if t := sc.GetInlineDnsTable(); t != nil {
		return t, nil
	}
	ext := sc.GetExternalDnsTable()
	if ext == nil {
		return nil, nil
	}
	var raw []byte
	switch {
	case ext.GetInlineString() != "":
		raw = []byte(ext.GetInlineString())
	case len(ext.GetInlineBytes()) > 0:
		raw = ext.GetInlineBytes()
	default:
		// The file is on the proxy's host, not necessarily ours; reading
		// some other file of the same name would be worse than refusing.
		return nil, fmt.Errorf("external_dns_table %q: only inline tables are supported", ext.String())
	}
	var t dnstablev3.DnsTable
	if err := protojson.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("external_dns_table: %w", err)
	}
	if err := t.ValidateAll(); err != nil {
		return nil, fmt.Errorf("external_dns_table: %w", err)
	}
	return &t, nil
}

func addTable(names map[string][]netip.Addr, order *[]string, t *dnstablev3.DnsTable) error {
	for _, d := range t.GetVirtualDomains() {
		name := strings.TrimSuffix(strings.ToLower(d.GetName()), ".")
		if name == "" || strings.Contains(name, "..") {
			return fmt.Errorf("invalid name %q", d.GetName())
		}
		// Names served through a cluster or SRV records have no VIP of
		// their own to answer with.
		for _, s := range d.GetEndpoint().GetAddressList().GetAddress() {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return fmt.Errorf("invalid address %q for name %s", s, name)
			}
			a = a.Unmap()
			if _, seen := names[name]; !seen {
				*order = append(*order, name)
			}
			if !slices.Contains(names[name], a) {
				names[name] = append(names[name], a)
			}
		}
	}
	return nil
}

// addEndpoints adds the IP endpoints of a load assignment to egress and,
// when dnsOK, its hostnames to hosts. Without dnsOK (STATIC, EDS) a hostname
// is an error: Envoy would refuse it too.
func addEndpoints(egress map[netip.AddrPort]struct{}, hosts map[mesh.DNSHost]struct{}, cla *endpointv3.ClusterLoadAssignment, dnsOK bool) error {
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			ep := lb.GetEndpoint()
			addrs := []*corev3.Address{ep.GetAddress()}
			for _, a := range ep.GetAdditionalAddresses() {
				addrs = append(addrs, a.GetAddress())
			}
			for _, a := range addrs {
				sa := a.GetSocketAddress()
				if sa == nil {
					// Pipes and internal addresses never leave the host.
					continue
				}
				// Lockdown opens an endpoint's port only, so the
				// port must be one a rule can name.
				port := sa.GetPortValue()
				if ip, err := netip.ParseAddr(sa.GetAddress()); err == nil && ip.Zone() == "" {
					if port == 0 || port > 65535 {
						return fmt.Errorf("endpoint %s: port %d is not usable", ip, port)
					}
					egress[netip.AddrPortFrom(ip.Unmap(), uint16(port))] = struct{}{}
					continue
				}
				if !dnsOK {
					return fmt.Errorf("endpoint address %q is not an IP address", sa.GetAddress())
				}
				host := strings.TrimSuffix(strings.ToLower(sa.GetAddress()), ".")
				if host == "" {
					return fmt.Errorf("endpoint address %q is not a hostname", sa.GetAddress())
				}
				if port == 0 || port > 65535 {
					return fmt.Errorf("endpoint %s: port %d is not usable", host, port)
				}
				hosts[mesh.DNSHost{Host: host, Port: uint16(port)}] = struct{}{}
			}
		}
	}
	return nil
}

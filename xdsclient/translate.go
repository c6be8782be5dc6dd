package xdsclient

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dnstablev3 "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/wire"
)

// DNSFilterName is the UDP listener filter whose DnsTable holds the names
// the mesh answers.
const DNSFilterName = wire.DNSFilter

// dnsFilterTypeURL identifies the filter by its config type, for servers
// that give it another name.
const dnsFilterTypeURL = wire.DNSFilterType

// hcmTypeURL is the HTTP connection manager's config, whose inline routes
// may carry Kuma's embedded-DNS table.
const hcmTypeURL = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

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
	if err := addEmbeddedDNS(names, &order, l); err != nil {
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
		// value) through GetType; only a real one means passthrough, and
		// only for outbound traffic.
		if _, ok := c.GetClusterDiscoveryType().(*clusterv3.Cluster_Type); ok {
			e.passthrough = wire.EgressPassthrough(c.GetName())
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
			if err := addName(names, order, name, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// addName adds one address of a name. An IPv4-mapped IPv6 address stays
// IPv6 and is answered as AAAA, as Envoy's dns_filter answers it: Kuma
// gives each VIP that way as its IPv6 form.
func addName(names map[string][]netip.Addr, order *[]string, name, addr string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil || a.Zone() != "" {
		return fmt.Errorf("invalid address %q for name %s", addr, name)
	}
	if _, seen := names[name]; !seen {
		*order = append(*order, name)
	}
	if !slices.Contains(names[name], a) {
		names[name] = append(names[name], a)
	}
	return nil
}

// addEmbeddedDNS reads Kuma's embedded-DNS table: a JSON document
// {"records":[{"name","ips"}],"ttl"} that kuma-cp serves to kuma-dp as the
// direct response of route path /dns (on listener _kuma:dynamicconfig). It
// is found by that structure, not by the listener's name, which Kuma's
// naming schemes change; a /dns direct response that is not such a
// document is someone else's route and is left alone.
func addEmbeddedDNS(names map[string][]netip.Addr, order *[]string, l *listenerv3.Listener) error {
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc.GetTypeUrl() != hcmTypeURL {
				continue
			}
			var hcm hcmv3.HttpConnectionManager
			if err := tc.UnmarshalTo(&hcm); err != nil {
				return fmt.Errorf("http_connection_manager config: %w", err)
			}
			for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					body, ok := embeddedDNSBody(r)
					if !ok {
						continue
					}
					if err := addEmbeddedTable(names, order, body); err != nil {
						return fmt.Errorf("route %s%s: embedded DNS table: %w", vh.GetName(), wire.KumaDNSRoute, err)
					}
				}
			}
		}
	}
	return nil
}

// embeddedDNSBody returns the body of a route that answers GET /dns with
// 200 whatever the request's headers (Kuma's ETag route answers 304 to a
// matching If-None-Match and has no body).
func embeddedDNSBody(r *routev3.Route) ([]byte, bool) {
	m := r.GetMatch()
	if m.GetPath() != wire.KumaDNSRoute || len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 {
		return nil, false
	}
	dr := r.GetDirectResponse()
	if dr == nil || dr.GetStatus() != 200 {
		return nil, false
	}
	switch b := dr.GetBody(); {
	case b.GetInlineString() != "":
		return []byte(b.GetInlineString()), true
	case len(b.GetInlineBytes()) > 0:
		return b.GetInlineBytes(), true
	}
	return nil, false
}

// embeddedTable is the document kuma-dp's embedded DNS server reads.
type embeddedTable struct {
	Records *[]struct {
		Name string   `json:"name"`
		IPs  []string `json:"ips"`
	} `json:"records"`
}

func addEmbeddedTable(names map[string][]netip.Addr, order *[]string, body []byte) error {
	var t embeddedTable
	if err := json.Unmarshal(body, &t); err != nil || t.Records == nil {
		// Not a DNS table (see addEmbeddedDNS).
		return nil
	}
	for i, rec := range *t.Records {
		name := strings.TrimSuffix(strings.ToLower(rec.Name), ".")
		if name == "" || strings.Contains(name, "..") {
			return fmt.Errorf("record %d: invalid name %q", i, rec.Name)
		}
		for _, ip := range rec.IPs {
			if err := addName(names, order, name, ip); err != nil {
				return fmt.Errorf("record %d: %w", i, err)
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

package mesh

import (
	"net/netip"
	"time"
)

// AgentSnapshot is everything a node agent needs from the control plane,
// distilled from the xDS resources its proxy receives. It is immutable once
// built: a new configuration gives a new snapshot, swapped in whole.
type AgentSnapshot struct {
	// Version is the xDS version the snapshot was built from (the
	// listener and cluster versions joined).
	Version string `json:"version"`
	// Names maps lower-case FQDNs without the trailing dot (httpbin.mesh,
	// httpbin.org, *.example.com) to their VIPs, from the DnsTable of the
	// envoy.filters.udp.dns_filter listener.
	Names map[string][]netip.Addr `json:"names"`
	// Passthrough is true iff the proxy was given an ORIGINAL_DST cluster.
	Passthrough bool `json:"passthrough"`
	// AllowedEndpoints are the endpoints of the proxy's clusters (the
	// ZoneEgress included), address and port: under lockdown each opens
	// its own port only.
	AllowedEndpoints []netip.AddrPort `json:"allowedEndpoints,omitempty"`
	// AllowedEgress are host prefixes every port of which stays open. New
	// snapshots leave it empty; it is read from snapshots persisted by
	// versions that recorded endpoints without their port, so an agent
	// restarted on one keeps what it allowed until the control plane
	// answers.
	AllowedEgress []netip.Prefix `json:"allowedEgress,omitempty"`
	// DNSHosts are the hostnames of DNS-resolved clusters (LOGICAL_DNS,
	// STRICT_DNS); the agent resolves them and allows what they resolve to.
	DNSHosts []DNSHost `json:"dnsHosts,omitempty"`
	// ReceivedAt is when the agent accepted the snapshot.
	ReceivedAt time.Time `json:"receivedAt"`
}

// DNSHost is a hostname and port a DNS-resolved cluster connects to.
type DNSHost struct {
	Host string `json:"host"`
	Port uint16 `json:"port"`
}

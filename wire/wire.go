// Package wire is the one home of shunt's wire contract with control planes
// and proxies: node metadata keys, the names of the xDS resources and
// filters shunt reads or writes, default ports, the bypass mark and the TTL
// of mesh names. Everything else refers to these constants, so a name that
// a peer fixes (Kuma, Istio, Envoy) is spelled once.
//
// It imports nothing: the kernel-rule engines, the DNS server, the control
// plane and the xDS client all depend on it.
package wire

import (
	"strings"
	"time"
)

// Default ports. They are Kuma's (kuma-dp and its transparent proxy), so a
// Dataplane written for kuma-dp needs no change; shunt replaces kuma-dp's
// DNS server on DNSPort, the two never run side by side.
const (
	// OutboundPort is where capture sends the workload's outbound TCP
	// (Envoy's outbound listener).
	OutboundPort = 15001
	// InboundPort is where capture sends inbound TCP.
	InboundPort = 15006
	// DNSPort is where shunt's DNS interceptor listens and where capture
	// sends the workload's DNS. kuma-dp's DNS server uses the same port.
	DNSPort = 15053
	// KumaAdminPort is kuma-dp's default Envoy admin port, sent to kuma-cp
	// as dataplane.admin.port.
	KumaAdminPort = 9901
	// KumaReadinessPort is kuma-dp's default readiness reporter port; kuma-cp
	// wants it beside the admin port.
	KumaReadinessPort = 9902
)

// BypassMark is the socket mark (SO_MARK) that exempts a socket's traffic
// from capture; shunt's own DNS forwarder sets it. Mark 0x5348 is "SH".
const BypassMark = 0x5348

// MeshNameTTL is the TTL of answers for the names the mesh knows. Kuma's
// embedded DNS and dns_filter both use 30 s: short, so that a VIP change
// reaches clients quickly, long enough that a busy client does not ask for
// every connection.
const MeshNameTTL = 30 * time.Second

// Node metadata keys.
const (
	// MetadataMesh names the node's mesh for shunt's own control plane.
	// Kuma ignores it (its node id is "<mesh>.<name>").
	MetadataMesh = "kuma.io/mesh"

	// Kuma's keys, as kuma-dp sends them (kuma pkg/core/xds metadata).
	// Ports are decimal strings.
	KumaMetaDNSPort       = "dataplane.dns.port"
	KumaMetaAdminPort     = "dataplane.admin.port"
	KumaMetaReadinessPort = "dataplane.readinessReporter.port"
	KumaMetaResource      = "dataplane.resource"
	KumaMetaProxyType     = "dataplane.proxyType"
	KumaMetaVersion       = "version"
	KumaMetaFeatures      = "features"
	KumaMetaIPv6Enabled   = "ipv6Enabled"

	// Istio's DNS proxy switches, without the ISTIO_META_ prefix that
	// pilot-agent strips; values are the strings "true"/"false".
	IstioDNSCapture      = "DNS_CAPTURE"
	IstioDNSAutoAllocate = "DNS_AUTO_ALLOCATE"
)

// KumaFeatureEmbeddedDNS makes kuma-cp send the DNS table as embedded-DNS
// JSON on the dynamic config listener instead of a UDP dns_filter listener
// (which the local Envoy would bind on DNSPort, where shunt listens).
const KumaFeatureEmbeddedDNS = "feature-embedded-dns"

// Resource and filter names.
const (
	// DNSFilter is Envoy's UDP DNS filter; its DnsTable holds names and
	// VIPs (Kuma's listener "kuma:dns", shunt's "shunt:dns").
	DNSFilter = "envoy.filters.udp.dns_filter"
	// DNSFilterType is its config's type URL, which identifies it under
	// any name.
	DNSFilterType = "type.googleapis.com/envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig"
	// KumaDNSListener is where kuma-cp puts the dns_filter.
	KumaDNSListener = "kuma:dns"
	// KumaDynamicConfigListener carries kuma-cp's embedded-DNS table as a
	// direct response on route KumaDNSRoute.
	KumaDynamicConfigListener = "_kuma:dynamicconfig"
	KumaDNSRoute              = "/dns"
	// ShuntDNSListener is where shunt's control plane puts its dns_filter.
	ShuntDNSListener = "shunt:dns"

	// Clusters that send outbound traffic to its original destination:
	// their presence means the mesh allows passthrough.
	ShuntPassthroughCluster = "outbound:passthrough"
	KumaPassthroughIPv4     = "outbound:passthrough:ipv4"
	KumaPassthroughIPv6     = "outbound:passthrough:ipv6"
	IstioPassthroughCluster = "PassthroughCluster"
)

// IstioNameTableType is the type URL of Istio's NDS resource.
const IstioNameTableType = "type.googleapis.com/istio.networking.nds.v1.NameTable"

// EgressPassthrough reports whether an ORIGINAL_DST cluster of this name
// sends the workload's outbound traffic to its original destination, which
// means the mesh allows passthrough. Control planes also send ORIGINAL_DST
// clusters for inbound traffic (Kuma's inbound:passthrough:ipv4 and, under
// its unified naming, self_transparentproxy_passthrough_inbound_ipv4;
// Istio's InboundPassthroughCluster), which say nothing about egress: every
// such name says "inbound".
func EgressPassthrough(cluster string) bool {
	return !strings.Contains(strings.ToLower(cluster), "inbound")
}

package redirect

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/shunt-dev/shunt/wire"
)

// Defaults a Kuma user knows.
const (
	DefaultInboundPort  = wire.InboundPort
	DefaultOutboundPort = wire.OutboundPort
	DefaultDNSPort      = wire.DNSPort
	// DefaultAdminPort is the port of shunt run's default --admin address.
	DefaultAdminPort = 15090
	DefaultProxyUID  = 5678
	// DefaultBypassMark is the socket mark (SO_MARK) that exempts a socket's
	// packets from capture. shunt's own DNS interceptor sets it on its
	// upstream queries, so they leave even when it does not run as the
	// proxy's UID.
	DefaultBypassMark = wire.BypassMark
	DefaultStateDir   = "/run/shunt"
	// DefaultLockDir is where earlier builds kept one lock file per network
	// namespace (LockNetns still takes one found there), shared by every
	// shunt process on the machine whatever its state directory.
	DefaultLockDir    = "/run/shunt/locks"
	DefaultResolvConf = "/etc/resolv.conf"
)

// InboundPassthroughV4 and V6 are the source addresses the proxy uses when it
// forwards an inbound connection to the local application; such packets are
// returned to the application, never recaptured.
var (
	InboundPassthroughV4 = netip.MustParseAddr("127.0.0.6")
	InboundPassthroughV6 = netip.MustParseAddr("::6")
)

// DNSMode says which port-53 traffic goes to the DNS interceptor.
type DNSMode string

const (
	// DNSResolvers captures DNS sent to the nameservers of the workload's
	// resolv.conf only, so a workload that queries some other server on
	// purpose keeps doing so.
	DNSResolvers DNSMode = "resolvers"
	// DNSAll captures every port-53 destination.
	DNSAll DNSMode = "all"
	// DNSNone leaves DNS alone.
	DNSNone DNSMode = "none"
)

// IPFamily selects the families shunt captures.
type IPFamily string

const (
	// FamilyDual captures IPv4 and, when the namespace has IPv6, IPv6.
	FamilyDual IPFamily = "dual"
	// FamilyIPv4 captures IPv4 only.
	FamilyIPv4 IPFamily = "ipv4"
)

// PortRange is an inclusive range of ports; a single port has First == Last.
type PortRange struct {
	First uint16 `json:"first"`
	Last  uint16 `json:"last"`
}

func (r PortRange) String() string {
	if r.First == r.Last {
		return fmt.Sprint(r.First)
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Contains reports whether p is in the range.
func (r PortRange) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// IDRange is an inclusive range of user ids.
type IDRange struct {
	First uint32 `json:"first"`
	Last  uint32 `json:"last"`
}

func (r IDRange) String() string {
	if r.First == r.Last {
		return fmt.Sprint(r.First)
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Contains reports whether id is in the range.
func (r IDRange) Contains(id uint32) bool { return id >= r.First && id <= r.Last }

// UIDPortExclusion lets the given users reach the given ports directly,
// as Kuma's --exclude-outbound-ports-for-uids does.
type UIDPortExclusion struct {
	// Protocol is "tcp", "udp" or "all".
	Protocol string      `json:"protocol"`
	Ports    []PortRange `json:"ports"`
	UIDs     []IDRange   `json:"uids"`
}

func (e UIDPortExclusion) String() string {
	return fmt.Sprintf("%s:%s:%s", e.Protocol, joinStrings(e.Ports), joinStrings(e.UIDs))
}

func joinStrings[T fmt.Stringer](v []T) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

// Egress restricts where captured workloads may connect when the mesh
// disables passthrough. Anything outside Allowed and Endpoints is refused at
// once (TCP reset, ICMP unreachable), for the application and the proxy
// alike.
type Egress struct {
	// Allowed are ranges every port and protocol of which stays reachable:
	// the VIP ranges, and addresses whose port is not known (snapshots
	// persisted by versions that recorded endpoints without their port).
	Allowed []netip.Prefix `json:"allowed"`
	// Endpoints are the proxy's upstream endpoints (cluster endpoints, the
	// ZoneEgress, what DNS-resolved clusters resolve to). Each opens its own
	// TCP port only: the spec lets nothing leave except to an endpoint of
	// the proxy, not to any port of its host. UDP to an endpoint is not
	// opened (the proxy's upstreams are TCP; upstream DNS servers are
	// allowed on their own).
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
}

// Validate reports an endpoint no rule can express.
func (e *Egress) Validate() error {
	if e == nil {
		return nil
	}
	for _, ap := range e.Endpoints {
		a := ap.Addr()
		switch {
		case !ap.IsValid() || ap.Port() == 0:
			return fmt.Errorf("egress endpoint %s: an address and a non-zero port are required", ap)
		case a.Zone() != "":
			return fmt.Errorf("egress endpoint %s: an address with a zone cannot be matched", ap)
		}
	}
	for _, p := range e.Allowed {
		if !p.IsValid() {
			return fmt.Errorf("egress allowed range %s is not a prefix", p)
		}
	}
	return nil
}

// EndpointsOf filters endpoints to one family; IPv4-mapped addresses count
// as IPv4 and come back unmapped.
func EndpointsOf(all []netip.AddrPort, v6 bool) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ap := range all {
		a := ap.Addr().Unmap()
		if a.Is6() == v6 {
			out = append(out, netip.AddrPortFrom(a, ap.Port()))
		}
	}
	return out
}

// Plan is a validated, engine-neutral description of the capture.
type Plan struct {
	ProxyUID    uint32  `json:"proxyUID"`
	ProxyGID    *uint32 `json:"proxyGID,omitempty"`
	BypassMark  uint32  `json:"bypassMark"`
	InboundPort uint16  `json:"inboundPort"`
	// CaptureInbound is false when inbound capture is disabled.
	CaptureInbound bool   `json:"captureInbound"`
	OutboundPort   uint16 `json:"outboundPort"`
	DNSPort        uint16 `json:"dnsPort"`
	// AdminPort is the agent's admin endpoint port (0: none). Nothing is
	// captured to it, but the port guard keeps it as it keeps the
	// captured ports: a process of the pod that holds it while the agent
	// is down answers no one.
	AdminPort uint16  `json:"adminPort,omitempty"`
	DNSMode   DNSMode `json:"dnsMode"`
	// DNSServers are the workload's nameservers, read from ResolvConf.
	DNSServers []netip.Addr `json:"dnsServers,omitempty"`
	// ResolvConf is the file the nameservers came from.
	ResolvConf string `json:"resolvConf,omitempty"`

	ExcludeInboundPorts         []PortRange        `json:"excludeInboundPorts,omitempty"`
	ExcludeOutboundPorts        []PortRange        `json:"excludeOutboundPorts,omitempty"`
	ExcludeInboundCIDRs         []netip.Prefix     `json:"excludeInboundCidrs,omitempty"`
	ExcludeOutboundCIDRs        []netip.Prefix     `json:"excludeOutboundCidrs,omitempty"`
	ExcludeOutboundPortsForUIDs []UIDPortExclusion `json:"excludeOutboundPortsForUids,omitempty"`
	ExcludeInterfaces           []string           `json:"excludeInterfaces,omitempty"`

	IPFamily IPFamily `json:"ipFamily"`
	// MeshCIDRs are the pod and service ranges; with Egress set they stay
	// reachable.
	MeshCIDRs []netip.Prefix `json:"meshCidrs,omitempty"`
	// Egress, when set, locks egress down to the allowed destinations.
	Egress *Egress `json:"egress,omitempty"`

	// The fields below are optional capture features. Each is zero when
	// unused, so a plan without them marshals as before; an engine that
	// does not implement one refuses a plan where it is set (see
	// ebpf.supported) rather than capturing differently from the plan.

	// InboundTProxy, when set, sends inbound TCP to the proxy with TPROXY
	// instead of REDIRECT: the proxy's listener (IP_TRANSPARENT) sees the
	// real destination as its local address and the real client as its
	// peer, and may connect to the application from the client's address.
	// Set only with CaptureInbound.
	InboundTProxy *TProxy `json:"inboundTproxy,omitempty"`
	// DropInvalid drops packets conntrack marks INVALID before capture
	// sees them: such a packet (out of window after a loss) escapes the
	// NAT of its connection, reaches the original port and draws a reset
	// that kills the connection.
	DropInvalid bool `json:"dropInvalid,omitempty"`
	// IncludeOutboundCIDRs, when not empty, limits outbound TCP capture to
	// these destinations (both families: a family with none listed has no
	// outbound TCP captured). Exclusions still apply; DNS capture does not
	// depend on it.
	IncludeOutboundCIDRs []netip.Prefix `json:"includeOutboundCidrs,omitempty"`
	// IncludeOutboundPorts, when not empty, limits outbound TCP capture to
	// these destination ports (and with IncludeOutboundCIDRs, to both).
	IncludeOutboundPorts []PortRange `json:"includeOutboundPorts,omitempty"`
	// IncludeInboundPorts, when not empty, limits inbound capture to these
	// destination ports.
	IncludeInboundPorts []PortRange `json:"includeInboundPorts,omitempty"`
	// VNets are interfaces of virtual machines or containers nested in the
	// workload (KubeVirt, Docker-in-pod): TCP arriving on them is the
	// nested workload's outbound traffic and goes to the outbound
	// listener, except to the VNet's own CIDR.
	VNets []VNet `json:"vnets,omitempty"`
	// PacketLog, when set, logs each packet a rule redirects, rejects or
	// drops (one per connection: the nat rules see first packets only).
	PacketLog *PacketLog `json:"packetLog,omitempty"`
}

// TProxy is what TPROXY inbound capture needs besides its rules: the
// packet mark that routes marked packets to the local stack, and the
// routing table holding that local route (policy rule "fwmark Mark lookup
// RouteTable", route "local default dev lo" in RouteTable, both families).
// The proxy sets Mark (SO_MARK) on the connections it makes to the
// application from the client's address, as Envoy's original_src filter
// does with Istio's default 1337; the application's replies carry it back.
type TProxy struct {
	Mark       uint32 `json:"mark"`
	RouteTable uint32 `json:"routeTable"`
}

// VNet is an interface whose inbound TCP is treated as outbound.
type VNet struct {
	Interface string `json:"interface"`
	// CIDR, when valid, is the nested network itself: traffic to it stays
	// inside and is not captured.
	CIDR netip.Prefix `json:"cidr,omitzero"`
}

func (v VNet) String() string {
	if v.CIDR.IsValid() {
		return v.Interface + ":" + v.CIDR.String()
	}
	return v.Interface
}

// PacketLog says where packet logs go.
type PacketLog struct {
	// Target is "nflog" (netlink group Group: read it from the namespace
	// with an NFLOG listener such as ulogd, or tcpdump -i nflog:N) or
	// "kernel" (the kernel log; from a namespace other than the host's the
	// kernel only writes it when the host sets
	// net.netfilter.nf_log_all_netns=1).
	Target string `json:"target"`
	Group  uint16 `json:"group,omitempty"`
}

func (l *PacketLog) String() string {
	if l.Target == "nflog" {
		return fmt.Sprintf("nflog:%d", l.Group)
	}
	return l.Target
}

// DNSServersOf returns the nameservers of one family (v6 false: IPv4).
func (p *Plan) DNSServersOf(v6 bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range p.DNSServers {
		if a.Unmap().Is6() == v6 {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// PrefixesOf filters prefixes to one family.
func PrefixesOf(all []netip.Prefix, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range all {
		if p.Addr().Is6() == v6 {
			out = append(out, p)
		}
	}
	return out
}

// Equal reports whether two plans describe the same capture: whether they
// marshal the same. The address lists, which may hold tens of thousands of
// entries (an agent compares plans on every change), are compared
// directly, and only the rest of the two plans is marshalled.
func (p *Plan) Equal(q *Plan) bool {
	if p == nil || q == nil {
		return p == q
	}
	a, b := *p, *q
	for _, l := range [][2]*[]netip.Prefix{
		{&a.ExcludeInboundCIDRs, &b.ExcludeInboundCIDRs},
		{&a.ExcludeOutboundCIDRs, &b.ExcludeOutboundCIDRs},
		{&a.MeshCIDRs, &b.MeshCIDRs},
		{&a.IncludeOutboundCIDRs, &b.IncludeOutboundCIDRs},
	} {
		if !slices.Equal(*l[0], *l[1]) {
			return false
		}
		*l[0], *l[1] = nil, nil
	}
	if (a.Egress == nil) != (b.Egress == nil) {
		return false
	}
	if a.Egress != nil {
		if !slices.Equal(a.Egress.Allowed, b.Egress.Allowed) || !slices.Equal(a.Egress.Endpoints, b.Egress.Endpoints) {
			return false
		}
		// "allowed" is marshalled even when empty: both sides keep the
		// same (empty) lists.
		a.Egress, b.Egress = &Egress{}, &Egress{}
	}
	return mustJSON(&a) == mustJSON(&b)
}

// Clone returns a deep copy.
func (p *Plan) Clone() *Plan {
	c := *p
	if p.ProxyGID != nil {
		g := *p.ProxyGID
		c.ProxyGID = &g
	}
	c.DNSServers = slices.Clone(p.DNSServers)
	c.ExcludeInboundPorts = slices.Clone(p.ExcludeInboundPorts)
	c.ExcludeOutboundPorts = slices.Clone(p.ExcludeOutboundPorts)
	c.ExcludeInboundCIDRs = slices.Clone(p.ExcludeInboundCIDRs)
	c.ExcludeOutboundCIDRs = slices.Clone(p.ExcludeOutboundCIDRs)
	c.ExcludeOutboundPortsForUIDs = slices.Clone(p.ExcludeOutboundPortsForUIDs)
	c.ExcludeInterfaces = slices.Clone(p.ExcludeInterfaces)
	c.MeshCIDRs = slices.Clone(p.MeshCIDRs)
	if p.InboundTProxy != nil {
		t := *p.InboundTProxy
		c.InboundTProxy = &t
	}
	c.IncludeOutboundCIDRs = slices.Clone(p.IncludeOutboundCIDRs)
	c.IncludeOutboundPorts = slices.Clone(p.IncludeOutboundPorts)
	c.IncludeInboundPorts = slices.Clone(p.IncludeInboundPorts)
	c.VNets = slices.Clone(p.VNets)
	if p.PacketLog != nil {
		l := *p.PacketLog
		c.PacketLog = &l
	}
	if p.Egress != nil {
		c.Egress = &Egress{Allowed: slices.Clone(p.Egress.Allowed), Endpoints: slices.Clone(p.Egress.Endpoints)}
	}
	return &c
}

func mustJSON(p *Plan) string {
	b, err := json.Marshal(p)
	if err != nil {
		panic(fmt.Sprintf("marshal plan: %v", err)) // a Plan holds only marshalable fields
	}
	return string(b)
}

// Feature is an optional capture feature a plan uses, named by the
// configuration key that turns it on, with the value as the user would
// write it. Engines refuse the features they do not implement by name.
type Feature struct {
	Key   string
	Value string
}

// Features lists the optional features the plan uses, in a fixed order.
func (p *Plan) Features() []Feature {
	var out []Feature
	add := func(key, value string) { out = append(out, Feature{Key: key, Value: value}) }
	if len(p.ExcludeInterfaces) > 0 {
		add("excludeInterfaces", strings.Join(p.ExcludeInterfaces, ","))
	}
	if p.InboundTProxy != nil {
		add("inboundMode", "tproxy")
	}
	if p.DropInvalid {
		add("dropInvalid", "true")
	}
	if len(p.IncludeOutboundCIDRs) > 0 {
		add("includeOutboundCidrs", joinStrings(p.IncludeOutboundCIDRs))
	}
	if len(p.IncludeOutboundPorts) > 0 {
		add("includeOutboundPorts", joinStrings(p.IncludeOutboundPorts))
	}
	if len(p.IncludeInboundPorts) > 0 {
		add("includeInboundPorts", joinStrings(p.IncludeInboundPorts))
	}
	if len(p.VNets) > 0 {
		add("vnetInterfaces", joinStrings(p.VNets))
	}
	if p.PacketLog != nil {
		add("packetLog", p.PacketLog.String())
	}
	return out
}

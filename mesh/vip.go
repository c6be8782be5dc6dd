package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
)

// Default VIP ranges. The IPv4 range is Kuma's: 240.0.0.0/4 is reserved
// (RFC 1112 "class E"), so it never collides with a real destination. The
// IPv6 range is a unique local /64 (RFC 4193) with a fixed, randomly chosen
// global ID, so it is equally unlikely to be routed anywhere.
const (
	DefaultVIPv4CIDR = "240.0.0.0/4"
	DefaultVIPv6CIDR = "fd5e:7a1c:94b3:ffff::/64"
)

// VIPs maps DNS names to their virtual IPs. V6 is empty when IPv6 VIPs are
// disabled.
type VIPs struct {
	V4 map[string]netip.Addr `json:"ipv4"`
	V6 map[string]netip.Addr `json:"ipv6,omitempty"`
}

// VIPAllocator hands out VIPs. It is a pure function of the names, the ranges
// and the previous assignment, so every node that reads the same resources
// computes the same VIPs, and a restarted control plane that loads its
// previous assignment keeps every VIP whose name still exists.
type VIPAllocator struct {
	V4 netip.Prefix
	// V6 is the zero Prefix when IPv6 VIPs are disabled.
	V6 netip.Prefix
}

// NewVIPAllocator checks the ranges. v6 may be empty to disable IPv6 VIPs.
func NewVIPAllocator(v4, v6 string) (VIPAllocator, error) {
	var a VIPAllocator
	p, err := netip.ParsePrefix(v4)
	if err != nil {
		return a, fmt.Errorf("IPv4 VIP range: %w", err)
	}
	if !p.Addr().Is4() || p.Bits() > 30 {
		return a, fmt.Errorf("IPv4 VIP range %s: want an IPv4 prefix of /30 or wider", v4)
	}
	a.V4 = p.Masked()
	if v6 != "" {
		p, err := netip.ParsePrefix(v6)
		if err != nil {
			return a, fmt.Errorf("IPv6 VIP range: %w", err)
		}
		if !p.Addr().Is6() || p.Addr().Is4In6() || p.Bits() > 126 {
			return a, fmt.Errorf("IPv6 VIP range %s: want an IPv6 prefix of /126 or wider", v6)
		}
		a.V6 = p.Masked()
	}
	return a, nil
}

// Allocate gives every name a VIP in each enabled family. Names keep the VIP
// they had in prev when it is still in range; new names get the address their
// hash points at, probing upwards on collision, names taken in sorted order.
// Names absent from names are released.
func (a VIPAllocator) Allocate(names []string, prev VIPs) (VIPs, error) {
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	var out VIPs
	var err error
	if out.V4, err = allocate(a.V4, "", sorted, prev.V4); err != nil {
		return VIPs{}, err
	}
	if a.V6.IsValid() {
		if out.V6, err = allocate(a.V6, "v6/", sorted, prev.V6); err != nil {
			return VIPs{}, err
		}
	}
	return out, nil
}

func allocate(p netip.Prefix, salt string, names []string, prev map[string]netip.Addr) (map[string]netip.Addr, error) {
	out := make(map[string]netip.Addr, len(names))
	used := make(map[netip.Addr]bool, len(names))
	for _, n := range names {
		if a, ok := prev[n]; ok && usable(p, a) && !used[a] {
			out[n] = a
			used[a] = true
		}
	}
	hostBits := p.Addr().BitLen() - p.Bits()
	size := uint64(1) << min(hostBits, 63)
	// Leave room so that probing ends quickly: a range more than half full
	// is a configuration mistake, not something to limp along with.
	if uint64(len(names)) > size/2 {
		return nil, fmt.Errorf("VIP range %s too small for %d names", p, len(names))
	}
	for _, n := range names {
		if _, ok := out[n]; ok {
			continue
		}
		start := hash(salt+n) % size
		for i := uint64(0); ; i++ {
			if i == size {
				return nil, fmt.Errorf("VIP range %s exhausted", p)
			}
			a := addrAt(p, (start+i)%size)
			if usable(p, a) && !used[a] {
				out[n] = a
				used[a] = true
				break
			}
		}
	}
	return out, nil
}

func hash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

func addrAt(p netip.Prefix, off uint64) netip.Addr {
	b := p.Addr().As16()
	lo := binary.BigEndian.Uint64(b[8:]) | off
	binary.BigEndian.PutUint64(b[8:], lo)
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		return a.Unmap()
	}
	return a
}

// usable leaves out the range's first address (the network, or IPv6's
// subnet-router anycast) and, for IPv4, the last one (a broadcast address;
// 255.255.255.255 in the default range).
func usable(p netip.Prefix, a netip.Addr) bool {
	if !p.Contains(a) || a == p.Addr() {
		return false
	}
	if a.Is4() {
		last := addrAt(p, (uint64(1)<<(32-p.Bits()))-1)
		return a != last
	}
	return true
}

// Hostnames lists the names that get VIPs: every service's <service>.mesh and
// the hostname of every ExternalService address. IP addresses need none: the
// proxy captures traffic to them directly.
func Hostnames(res *Resources) []string {
	seen := map[string]bool{}
	for i := range res.ExternalServices {
		es := &res.ExternalServices[i]
		seen[ServiceHostname(es.Service)] = true
		if !es.Address.IsIP() {
			seen[es.Address.Host] = true
		}
	}
	return sortedKeys(seen)
}

// ServiceHostname is the name under which a service is reached on port 80.
func ServiceHostname(service string) string {
	return strings.ToLower(service) + ".mesh"
}

// ErrNoVIP is returned when a name has no VIP in the assignment given.
var ErrNoVIP = errors.New("no VIP assigned")

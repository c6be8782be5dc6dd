package ebpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
)

// Flags of captureConfig.Flags; they mirror CFG_* in bpf/capture.h.
const (
	cfgInbound         = 1 << 0
	cfgIPv6            = 1 << 1
	cfgEgress          = 1 << 2
	cfgProxyGID        = 1 << 3
	cfgDNSResolvers    = 1 << 4
	cfgDNSAll          = 1 << 5
	cfgIncludeOutCIDRs = 1 << 6
	cfgIncludeOutPorts = 1 << 7
	cfgIncludeInPorts  = 1 << 8

	portExcludeOut = 1 << 0
	portExcludeIn  = 1 << 1
	portIncludeOut = 1 << 2
	portIncludeIn  = 1 << 3

	ruleTCP = 1 << 0
	ruleUDP = 1 << 1

	maxUIDRules = 64
	numPorts    = 65536
)

// Indices of the stats map; they mirror enum stat in bpf/capture.h.
var statNames = []string{
	"redirected outbound", "redirected to inbound", "redirected DNS", "rejected (egress lockdown)",
	"original destination answered", "original destination unknown", "inbound steered", "DNS replies restored",
}

// entry is one key and value of a map, in the kernel's byte layout, with
// a line a human reads.
type entry struct {
	key, value []byte
	text       string
}

// contents is what the loader keeps in one map. Arrays list only the
// indices whose value is not zero; every other index must be zero.
type contents struct {
	name    string
	array   bool
	trie    bool             // large (an LPM trie, the endpoints): diffed against the record
	entries map[string]entry // by string(key)
}

func newContents(name string, array bool) *contents {
	return &contents{name: name, array: array, entries: map[string]entry{}}
}

func (c *contents) put(key, value any, text string) {
	k, v := mustBytes(key), mustBytes(value)
	c.entries[string(k)] = entry{key: k, value: v, text: text}
}

func (c *contents) lines() []string {
	out := make([]string, 0, len(c.entries))
	for _, e := range c.entries {
		out = append(out, e.text)
	}
	sort.Strings(out)
	if len(out) == 0 {
		out = append(out, "(empty)")
	}
	return out
}

func mustBytes(v any) []byte {
	b, err := binary.Append(nil, binary.NativeEndian, v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // only fixed-size types reach here
	}
	return b
}

func addr16(a netip.Addr) [4]uint32 {
	b := a.Unmap()
	var s [16]byte
	if b.Is4() {
		s = netip.AddrFrom16(b.As16()).As16() // ::ffff:a.b.c.d
	} else {
		s = b.As16()
	}
	var out [4]uint32
	for i := range out {
		// The programs compare in network order; keep the bytes as they
		// are on the wire.
		out[i] = binary.NativeEndian.Uint32(s[i*4:])
	}
	return out
}

func lpmKey(p netip.Prefix) captureLpmKey {
	bits := p.Bits()
	if p.Addr().Unmap().Is4() {
		bits += 96
	}
	return captureLpmKey{Prefixlen: uint32(bits), Ip: addr16(p.Addr())}
}

// desired computes every map the loader owns from the plan and the
// workload's own addresses.
func desired(p *redirect.Plan, local []netip.Addr) ([]*contents, error) {
	if err := supported(p); err != nil {
		return nil, err
	}
	cfg := captureConfig{
		ProxyUid:     p.ProxyUID,
		BypassMark:   p.BypassMark,
		OutboundPort: p.OutboundPort,
		InboundPort:  p.InboundPort,
		DnsPort:      p.DNSPort,
		AdminPort:    p.AdminPort,
	}
	if p.CaptureInbound {
		cfg.Flags |= cfgInbound
	}
	if p.IPFamily != redirect.FamilyIPv4 {
		cfg.Flags |= cfgIPv6
	}
	if p.Egress != nil {
		cfg.Flags |= cfgEgress
	}
	if p.ProxyGID != nil {
		cfg.Flags |= cfgProxyGID
		cfg.ProxyGid = *p.ProxyGID
	}
	if len(p.IncludeOutboundCIDRs) > 0 {
		cfg.Flags |= cfgIncludeOutCIDRs
	}
	if len(p.IncludeOutboundPorts) > 0 {
		cfg.Flags |= cfgIncludeOutPorts
	}
	if len(p.IncludeInboundPorts) > 0 {
		cfg.Flags |= cfgIncludeInPorts
	}
	switch p.DNSMode {
	case redirect.DNSAll:
		cfg.Flags |= cfgDNSAll
	case redirect.DNSResolvers:
		cfg.Flags |= cfgDNSResolvers
	}

	rules := newContents("uid_rules", true)
	n := uint32(0)
	for _, e := range p.ExcludeOutboundPortsForUIDs {
		proto := uint32(ruleTCP | ruleUDP)
		switch e.Protocol {
		case "tcp":
			proto = ruleTCP
		case "udp":
			proto = ruleUDP
		}
		for _, pr := range e.Ports {
			for _, u := range e.UIDs {
				if n == maxUIDRules {
					return nil, fmt.Errorf("excludeOutboundPortsForUids: more than %d port-range × uid-range pairs; the eBPF engine holds at most %d", maxUIDRules, maxUIDRules)
				}
				rules.put(n, captureUidRule{UidFirst: u.First, UidLast: u.Last, PortFirst: pr.First, PortLast: pr.Last, Proto: proto},
					fmt.Sprintf("%2d: %s ports %s uids %s", n, e.Protocol, pr, u))
				n++
			}
		}
	}
	cfg.UidRules = uint16(n)

	config := newContents("config_map", true)
	config.put(uint32(0), cfg, describeConfig(p))

	ports := newContents("port_flags", true)
	var flags [numPorts]uint8
	for _, r := range p.ExcludeOutboundPorts {
		for port := int(r.First); port <= int(r.Last); port++ {
			flags[port] |= portExcludeOut
		}
	}
	for _, r := range p.ExcludeInboundPorts {
		for port := int(r.First); port <= int(r.Last); port++ {
			flags[port] |= portExcludeIn
		}
	}
	for _, r := range p.IncludeOutboundPorts {
		for port := int(r.First); port <= int(r.Last); port++ {
			flags[port] |= portIncludeOut
		}
	}
	for _, r := range p.IncludeInboundPorts {
		for port := int(r.First); port <= int(r.Last); port++ {
			flags[port] |= portIncludeIn
		}
	}
	for port, f := range flags {
		if f != 0 {
			var what []string
			if f&portExcludeOut != 0 {
				what = append(what, "outbound excluded")
			}
			if f&portExcludeIn != 0 {
				what = append(what, "inbound excluded")
			}
			if f&portIncludeOut != 0 {
				what = append(what, "outbound included")
			}
			if f&portIncludeIn != 0 {
				what = append(what, "inbound included")
			}
			ports.put(uint32(port), f, fmt.Sprintf("%5d: %s", port, strings.Join(what, ", ")))
		}
	}

	trie := func(name string, prefixes []netip.Prefix, why string) *contents {
		c := newContents(name, false)
		c.trie = true
		for _, pfx := range prefixes {
			c.put(lpmKey(pfx), uint8(1), pfx.String()+" "+why)
		}
		return c
	}
	var allowed []netip.Prefix
	if p.Egress != nil {
		allowed = append(append(allowed, p.Egress.Allowed...), p.MeshCIDRs...)
	}

	// A hash of its own rather than /128 entries of the trie: the trie's
	// key has no port, and pinned maps keep their layout.
	endpoints := newContents("egress_endpoints", false)
	endpoints.trie = true
	if p.Egress != nil {
		for _, ap := range p.Egress.Endpoints {
			a := ap.Addr().Unmap()
			fam := uint16(unix.AF_INET6)
			if a.Is4() {
				fam = unix.AF_INET
			}
			endpoints.put(captureEndpoint{Ip: addr16(a), Port: ap.Port(), Family: fam}, uint8(1),
				netip.AddrPortFrom(a, ap.Port()).String()+" tcp (egress endpoint)")
		}
	}

	locals := newContents("local_addrs", false)
	for _, a := range local {
		locals.put(captureAddr{Ip: addr16(a)}, uint8(1), a.String())
	}
	dns := newContents("dns_servers", false)
	// Lockdown reads the nameservers too (they stay reachable on port 53);
	// only with DNSResolvers does capture redirect to them (CFG_DNS_RESOLVERS).
	if p.DNSMode == redirect.DNSResolvers || p.Egress != nil {
		for _, a := range p.DNSServers {
			dns.put(captureAddr{Ip: addr16(a)}, uint8(1), a.String()+" ("+p.ResolvConf+")")
		}
	}

	return []*contents{
		config,
		ports,
		rules,
		trie("exclude_out_cidrs", p.ExcludeOutboundCIDRs, "(excludeOutboundCidrs)"),
		trie("exclude_in_cidrs", p.ExcludeInboundCIDRs, "(excludeInboundCidrs)"),
		trie("include_out_cidrs", p.IncludeOutboundCIDRs, "(includeOutboundCidrs)"),
		trie("egress_allowed", allowed, "(egress allowed)"),
		endpoints,
		locals,
		dns,
	}, nil
}

// supported refuses what the socket hooks cannot express, rather than
// capturing differently from the plan.
func supported(p *redirect.Plan) error {
	if err := p.Egress.Validate(); err != nil {
		return err
	}
	for _, f := range p.Features() {
		if why, refused := refusedFeatures[f.Key]; refused {
			return fmt.Errorf("%s: invalid value %q: not supported by the eBPF engine: %s", f.Key, f.Value, why)
		}
	}
	return nil
}

// Supported reports whether the eBPF engine can implement the plan, and
// if not which key it refuses and why.
func Supported(p *redirect.Plan) error { return supported(p) }

// refusedFeatures are the optional plan features the eBPF engine does not
// implement, with the reason a user reads.
var refusedFeatures = map[string]string{
	"excludeInterfaces": "socket hooks run before routing picks an interface; use the iptables engine",
	"inboundMode": "its inbound capture already keeps the client's and the destination's addresses " +
		"(sk_lookup hands the connection to the proxy's listener unchanged), so TPROXY is not needed; leave inboundMode at redirect",
	"dropInvalid":    "it does not NAT, so a packet conntrack finds invalid cannot escape capture and draw a reset; nothing to drop",
	"vnetInterfaces": "a nested VM's or container's traffic is forwarded, never sent by a socket of the workload's cgroup, so cgroup hooks do not see it; use the iptables engine",
	"packetLog":      "its programs count what they do instead (shunt status shows the stats map); use shunt explain, or the iptables engine",
}

func describeConfig(p *redirect.Plan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "proxyUID=%d", p.ProxyUID)
	if p.ProxyGID != nil {
		fmt.Fprintf(&b, " proxyGID=%d", *p.ProxyGID)
	}
	fmt.Fprintf(&b, " bypassMark=%#x outbound=%d", p.BypassMark, p.OutboundPort)
	if p.CaptureInbound {
		fmt.Fprintf(&b, " inbound=%d", p.InboundPort)
	} else {
		b.WriteString(" inbound=off")
	}
	fmt.Fprintf(&b, " dns=%s:%d ipFamily=%s", p.DNSMode, p.DNSPort, p.IPFamily)
	if p.AdminPort != 0 {
		fmt.Fprintf(&b, " admin=%d", p.AdminPort)
	} else {
		b.WriteString(" admin=off")
	}
	if p.Egress != nil {
		b.WriteString(" egress=locked")
	}
	if len(p.IncludeOutboundCIDRs) > 0 {
		b.WriteString(" includeOutboundCidrs")
	}
	if len(p.IncludeOutboundPorts) > 0 {
		b.WriteString(" includeOutboundPorts")
	}
	if len(p.IncludeInboundPorts) > 0 {
		b.WriteString(" includeInboundPorts")
	}
	return b.String()
}

// change is one write to a map, with what it replaced so it can be undone.
type change struct {
	m          *ebpf.Map
	key        []byte
	old, value []byte // nil: absent
}

func (c change) apply(undo bool) error {
	v := c.value
	if undo {
		v = c.old
	}
	if v == nil {
		err := c.m.Delete(c.key)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return err
	}
	return c.m.Put(c.key, v)
}

// diff compares a live map with what it should hold and returns the writes
// that make it so.
func diff(m *ebpf.Map, want *contents) ([]change, error) {
	var out []change
	if want.array {
		size := m.ValueSize()
		zero := make([]byte, size)
		max := m.MaxEntries()
		if want.name == "port_flags" {
			return diffPorts(m, want)
		}
		for i := uint32(0); i < max; i++ {
			k := mustBytes(i)
			var got []byte
			if err := m.Lookup(k, &got); err != nil {
				return nil, fmt.Errorf("read %s[%d]: %w", want.name, i, err)
			}
			w := zero
			if e, ok := want.entries[string(k)]; ok {
				w = e.value
			}
			if !bytes.Equal(got, w) {
				out = append(out, change{m: m, key: k, old: got, value: w})
			}
		}
		return out, nil
	}
	return diffShare(m, want, func(_, _ []byte) bool { return true })
}

// diffShare is diff for the entries of a hash map that owned says are
// the caller's: all of them for a map of its own, one pod's in a map the
// node's pods share.
func diffShare(m *ebpf.Map, want *contents, owned func(k, v []byte) bool) ([]change, error) {
	var out []change
	seen := map[string]bool{}
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !owned(k, v) {
			continue
		}
		ks := string(k)
		seen[ks] = true
		e, ok := want.entries[ks]
		switch {
		case !ok:
			out = append(out, change{m: m, key: bytes.Clone(k), old: bytes.Clone(v)})
		case !bytes.Equal(e.value, v):
			out = append(out, change{m: m, key: e.key, old: bytes.Clone(v), value: e.value})
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", want.name, err)
	}
	for ks, e := range want.entries {
		if !seen[ks] {
			out = append(out, change{m: m, key: e.key, value: e.value})
		}
	}
	return out, nil
}

// diffRecorded returns the writes that turn a map holding was into one
// holding want, without reading the map: O(entries of the two plans), one
// syscall per changed entry.
func diffRecorded(m *ebpf.Map, was, want *contents) []change {
	var out []change
	for ks, e := range want.entries {
		o, ok := was.entries[ks]
		switch {
		case !ok:
			out = append(out, change{m: m, key: e.key, value: e.value})
		case !bytes.Equal(o.value, e.value):
			out = append(out, change{m: m, key: e.key, old: o.value, value: e.value})
		}
	}
	for ks, o := range was.entries {
		if _, ok := want.entries[ks]; !ok {
			out = append(out, change{m: m, key: o.key, old: o.value})
		}
	}
	return out
}

// diffFresh returns the writes that fill a map this install created: it is
// empty (arrays all zero), so nothing needs reading.
func diffFresh(m *ebpf.Map, want *contents) []change {
	out := make([]change, 0, len(want.entries))
	for _, e := range want.entries {
		var old []byte
		if want.array {
			old = make([]byte, len(e.value))
		}
		out = append(out, change{m: m, key: e.key, old: old, value: e.value})
	}
	return out
}

// diffPorts reads the 64 Ki-entry port table in one batch.
func diffPorts(m *ebpf.Map, want *contents) ([]change, error) {
	keys := make([]uint32, numPorts)
	vals := make([]uint8, numPorts)
	var cursor ebpf.MapBatchCursor
	n := 0
	for n < numPorts {
		c, err := m.BatchLookup(&cursor, keys[n:], vals[n:], nil)
		n += c
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read port_flags: %w", err)
		}
	}
	got := make([]uint8, numPorts)
	for i := 0; i < n; i++ {
		got[keys[i]] = vals[i]
	}
	var out []change
	for port := uint32(0); port < numPorts; port++ {
		k := mustBytes(port)
		var w uint8
		if e, ok := want.entries[string(k)]; ok {
			w = e.value[0]
		}
		if got[port] != w {
			out = append(out, change{m: m, key: k, old: []byte{got[port]}, value: []byte{w}})
		}
	}
	return out, nil
}

// describeChange says what a drift is, for Status.
func describeChange(name string, want *contents, c change) string {
	if e, ok := want.entries[string(c.key)]; ok {
		if c.old == nil {
			return fmt.Sprintf("map %s: entry %q is missing", name, e.text)
		}
		return fmt.Sprintf("map %s: entry %q differs", name, e.text)
	}
	return fmt.Sprintf("map %s: unexpected entry %x = %x", name, c.key, c.old)
}

package redirect

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shunt-dev/shunt/resolvconf"
)

// Host gives validation what it needs from the machine: files and the user
// database. Tests pass a fake; commands pass OSHost.
type Host interface {
	ReadFile(path string) ([]byte, error)
	LookupUser(name string) (uint32, error)
	LookupGroup(name string) (uint32, error)
}

// OSHost reads the real machine.
type OSHost struct{}

// ReadFile implements Host.
func (OSHost) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }

// LookupUser implements Host.
func (OSHost) LookupUser(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	id, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(id), err
}

// LookupGroup implements Host.
func (OSHost) LookupGroup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	id, err := strconv.ParseUint(g.Gid, 10, 32)
	return uint32(id), err
}

// FieldError names the configuration key and the value that was refused.
type FieldError struct {
	Key   string
	Value string
	Msg   string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: invalid value %q: %s", e.Key, e.Value, e.Msg)
}

// ValidationError gathers every problem found, so a user fixes them in one go.
type ValidationError struct{ Errs []error }

func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		msgs[i] = err.Error()
	}
	return "invalid configuration: " + strings.Join(msgs, "; ")
}

// Unwrap lets errors.As find each FieldError.
func (e *ValidationError) Unwrap() []error { return e.Errs }

// ResolvConfPath returns the resolv.conf that describes the workload's
// resolvers: with a named network namespace, ip-netns's
// /etc/netns/NAME/resolv.conf wins when it exists, as it is what programs
// started with `ip netns exec NAME` see.
func (c *Config) ResolvConfPath(h Host) string {
	if ns := c.Get("netns"); ns != "" && !c.IsSet("resolvConf") {
		p := filepath.Join("/etc/netns", filepath.Base(ns), "resolv.conf")
		if _, err := h.ReadFile(p); err == nil {
			return p
		}
	}
	return c.Get("resolvConf")
}

// Plan validates the configuration and returns the capture plan. Nothing is
// touched: every check happens here, before an engine runs.
func (c *Config) Plan(h Host) (*Plan, error) {
	v := &validator{c: c}
	p := &Plan{}

	switch e := c.Get("engine"); e {
	case "iptables", "nftables", "ebpf", "auto":
	default:
		v.fail("engine", e, "want iptables, nftables, ebpf or auto")
	}
	switch b := c.Get("iptablesBackend"); b {
	case "auto", "legacy", "nft":
	default:
		v.fail("iptablesBackend", b, "want auto, legacy or nft")
	}

	p.ProxyUID = v.id("proxyUID", h.LookupUser, "user")
	if c.Get("proxyGID") != "" {
		g := v.id("proxyGID", h.LookupGroup, "group")
		p.ProxyGID = &g
	}
	p.InboundPort = v.port("inboundPort")
	p.OutboundPort = v.port("outboundPort")
	p.DNSPort = v.port("dnsPort")
	if a := strings.TrimSpace(c.Get("adminPort")); a != "0" && a != "off" {
		p.AdminPort = v.port("adminPort")
	}
	p.CaptureInbound = !c.Bool("noInbound")
	p.BypassMark = v.uint32("bypassMark")

	ports := map[uint16]string{}
	for _, k := range []string{"outboundPort", "inboundPort", "dnsPort", "adminPort"} {
		port := map[string]uint16{"inboundPort": p.InboundPort, "outboundPort": p.OutboundPort, "dnsPort": p.DNSPort, "adminPort": p.AdminPort}[k]
		if port == 0 {
			continue
		}
		if other, dup := ports[port]; dup {
			v.fail(k, c.Get(k), "the same port as "+other)
		}
		ports[port] = k
	}

	var modes []string
	for _, k := range []string{"redirectDNS", "redirectAllDNS", "noDNS"} {
		if c.Bool(k) {
			modes = append(modes, k)
		}
	}
	switch {
	case len(modes) > 1:
		v.errs = append(v.errs, fmt.Errorf("conflicting DNS modes: %s; choose one", strings.Join(modes, " and ")))
	case len(modes) == 1 && modes[0] == "redirectAllDNS":
		p.DNSMode = DNSAll
	case len(modes) == 1 && modes[0] == "noDNS":
		p.DNSMode = DNSNone
	default:
		p.DNSMode = DNSResolvers
	}

	p.ExcludeInboundPorts = v.portList("excludeInboundPorts")
	p.ExcludeOutboundPorts = v.portList("excludeOutboundPorts")
	p.ExcludeInboundCIDRs = v.cidrList("excludeInboundCidrs")
	p.ExcludeOutboundCIDRs = v.cidrList("excludeOutboundCidrs")
	p.ExcludeOutboundPortsForUIDs = v.uidPorts("excludeOutboundPortsForUids", h)
	p.ExcludeInterfaces = v.interfaces("excludeInterfaces")
	p.MeshCIDRs = v.cidrList("meshCidrs")
	if c.Get("engine") == "ebpf" && len(p.ExcludeInterfaces) > 0 {
		// Socket hooks run before routing picks an interface.
		v.fail("excludeInterfaces", c.Get("excludeInterfaces"), "not supported by the ebpf engine (its hooks run before an interface is chosen); use the iptables engine")
	}

	p.DropInvalid = c.Bool("dropInvalid")
	p.IncludeOutboundCIDRs = v.cidrList("includeOutboundCidrs")
	p.IncludeOutboundPorts = v.portList("includeOutboundPorts")
	p.IncludeInboundPorts = v.portList("includeInboundPorts")
	if len(p.IncludeInboundPorts) > 0 && !p.CaptureInbound {
		v.fail("includeInboundPorts", c.Get("includeInboundPorts"), "inbound capture is disabled (noInbound)")
	}
	p.VNets = v.vnets("vnetInterfaces", p.ExcludeInterfaces)
	p.PacketLog = v.packetLog("packetLog")
	p.InboundTProxy = v.tproxy(p)
	v.xtables()

	for _, k := range []string{"inboundPort"} {
		for _, r := range p.ExcludeInboundPorts {
			if p.CaptureInbound && r.Contains(p.InboundPort) {
				v.fail("excludeInboundPorts", c.Get("excludeInboundPorts"), "excludes "+k+" "+strconv.Itoa(int(p.InboundPort))+" itself")
			}
		}
	}

	switch f := IPFamily(c.Get("ipFamily")); f {
	case FamilyDual, FamilyIPv4:
		p.IPFamily = f
	default:
		v.fail("ipFamily", string(f), "want dual or ipv4")
	}

	if p.DNSMode == DNSResolvers {
		path := c.ResolvConfPath(h)
		p.ResolvConf = path
		data, err := h.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			v.fail("resolvConf", path, "file does not exist; give the workload's resolv.conf, or use redirectAllDNS or noDNS")
		case err != nil:
			v.fail("resolvConf", path, err.Error())
		default:
			servers, err := Nameservers(data)
			if err != nil {
				v.fail("resolvConf", path, err.Error())
			} else if len(servers) == 0 {
				v.fail("resolvConf", path, "no nameserver lines; use redirectAllDNS or noDNS")
			}
			p.DNSServers = servers
		}
	}

	if len(v.errs) > 0 {
		return nil, &ValidationError{Errs: v.errs}
	}
	return p, nil
}

// Nameservers returns the nameserver addresses of a resolv.conf, parsed
// by resolvconf.Parse, the interceptor's rules. A zone suffix
// (fe80::1%eth0) is dropped, as the kernel rules match addresses only.
func Nameservers(data []byte) ([]netip.Addr, error) {
	rc, err := resolvconf.Parse(data)
	if err != nil {
		return nil, err
	}
	return rc.Addrs(), nil
}

type validator struct {
	c    *Config
	errs []error
}

func (v *validator) fail(key, value, msg string) {
	v.errs = append(v.errs, &FieldError{Key: key, Value: value, Msg: msg})
}

func (v *validator) port(key string) uint16 {
	s := strings.TrimSpace(v.c.Get(key))
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		v.fail(key, s, "want a port number from 1 to 65535")
		return 0
	}
	return uint16(n)
}

func (v *validator) uint32(key string) uint32 {
	s := strings.TrimSpace(v.c.Get(key))
	n, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		v.fail(key, s, "want a number from 0 to 4294967295 (decimal or 0x hex)")
		return 0
	}
	return uint32(n)
}

func (v *validator) id(key string, lookup func(string) (uint32, error), what string) uint32 {
	s := strings.TrimSpace(v.c.Get(key))
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n)
	}
	if s == "" {
		v.fail(key, s, "want a numeric id or a "+what+" name")
		return 0
	}
	id, err := lookup(s)
	if err != nil {
		v.fail(key, s, "unknown "+what)
		return 0
	}
	return id
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.ParseUint(lo, 10, 32)
	if err != nil || a < 1 || a > 65535 {
		return PortRange{}, fmt.Errorf("%q is not a port from 1 to 65535", s)
	}
	if !isRange {
		return PortRange{uint16(a), uint16(a)}, nil
	}
	b, err := strconv.ParseUint(hi, 10, 32)
	if err != nil || b < 1 || b > 65535 || b < a {
		return PortRange{}, fmt.Errorf("%q is not a port range low-high within 1-65535", s)
	}
	return PortRange{uint16(a), uint16(b)}, nil
}

func (v *validator) portList(key string) []PortRange {
	raw := v.c.Get(key)
	var out []PortRange
	seen := map[PortRange]bool{}
	for _, f := range splitList(raw) {
		r, err := parsePortRange(f)
		if err != nil {
			v.fail(key, f, err.Error())
			continue
		}
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].First < out[j].First })
	return out
}

func (v *validator) cidrList(key string) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range splitList(v.c.Get(key)) {
		p, err := ParsePrefix(f)
		if err != nil {
			v.fail(key, f, "not a CIDR or IP address")
			continue
		}
		if !containsPrefix(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// ParsePrefix accepts a CIDR or a bare address (a /32 or /128) and returns
// the masked prefix.
func ParsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func containsPrefix(l []netip.Prefix, p netip.Prefix) bool {
	for _, x := range l {
		if x == p {
			return true
		}
	}
	return false
}

func (v *validator) uidPorts(key string, h Host) []UIDPortExclusion {
	var out []UIDPortExclusion
	for _, entry := range strings.FieldsFunc(v.c.Get(key), func(r rune) bool { return r == ';' || r == '\n' }) {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		parts := strings.Split(entry, ":")
		if len(parts) != 3 {
			v.fail(key, entry, "want proto:ports:uids, e.g. tcp:22,80:1000-1005")
			continue
		}
		e := UIDPortExclusion{Protocol: strings.ToLower(parts[0])}
		switch e.Protocol {
		case "tcp", "udp", "all":
		case "*", "":
			e.Protocol = "all"
		default:
			v.fail(key, entry, fmt.Sprintf("protocol %q: want tcp, udp or all", parts[0]))
			continue
		}
		ok := true
		for _, f := range strings.Split(parts[1], ",") {
			if f = strings.TrimSpace(f); f == "*" {
				e.Ports = append(e.Ports, PortRange{1, 65535})
				continue
			}
			r, err := parsePortRange(f)
			if err != nil {
				v.fail(key, entry, err.Error())
				ok = false
				break
			}
			e.Ports = append(e.Ports, r)
		}
		for _, f := range strings.Split(parts[2], ",") {
			f = strings.TrimSpace(f)
			r, err := parseIDRange(f, h)
			if err != nil {
				v.fail(key, entry, err.Error())
				ok = false
				break
			}
			e.UIDs = append(e.UIDs, r)
		}
		if ok {
			out = append(out, e)
		}
	}
	return out
}

func parseIDRange(s string, h Host) (IDRange, error) {
	if lo, hi, isRange := strings.Cut(s, "-"); isRange {
		a, err1 := strconv.ParseUint(lo, 10, 32)
		b, err2 := strconv.ParseUint(hi, 10, 32)
		if err1 != nil || err2 != nil || b < a {
			return IDRange{}, fmt.Errorf("%q is not a uid range low-high", s)
		}
		return IDRange{uint32(a), uint32(b)}, nil
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return IDRange{uint32(n), uint32(n)}, nil
	}
	id, err := h.LookupUser(s)
	if err != nil {
		return IDRange{}, fmt.Errorf("unknown user %q", s)
	}
	return IDRange{id, id}, nil
}

func (v *validator) interfaces(key string) []string {
	var out []string
	for _, f := range splitList(v.c.Get(key)) {
		if len(f) > 15 || strings.ContainsAny(f, "/ \t:") {
			v.fail(key, f, "not an interface name (at most 15 characters, no '/', ':' or spaces)")
			continue
		}
		if !contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// tproxy checks inboundMode and, for tproxy, its mark and routing table.
func (v *validator) tproxy(p *Plan) *TProxy {
	c := v.c
	switch mode := strings.TrimSpace(c.Get("inboundMode")); mode {
	case "redirect", "":
		for _, k := range []string{"tproxyMark", "tproxyRouteTable"} {
			if c.IsSet(k) {
				v.fail(k, c.Get(k), "only used with inboundMode tproxy")
			}
		}
		return nil
	case "tproxy":
		if !p.CaptureInbound {
			v.fail("inboundMode", mode, "inbound capture is disabled (noInbound)")
			return nil
		}
		t := &TProxy{Mark: v.uint32("tproxyMark"), RouteTable: v.uint32("tproxyRouteTable")}
		switch {
		case t.Mark == 0:
			v.fail("tproxyMark", c.Get("tproxyMark"), "want a non-zero mark")
		case t.Mark == p.BypassMark:
			v.fail("tproxyMark", c.Get("tproxyMark"), "the same mark as bypassMark")
		}
		switch t.RouteTable {
		case 0, 253, 254, 255:
			// unspec, default, main and local belong to the system.
			v.fail("tproxyRouteTable", c.Get("tproxyRouteTable"), "want a table of shunt's own, not 0, 253 (default), 254 (main) or 255 (local)")
		}
		return t
	default:
		v.fail("inboundMode", mode, "want redirect or tproxy")
		return nil
	}
}

// vnets parses IFACE or IFACE:CIDR entries.
func (v *validator) vnets(key string, excluded []string) []VNet {
	var out []VNet
	for _, f := range splitList(v.c.Get(key)) {
		name, cidr, hasCIDR := strings.Cut(f, ":")
		if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ \t") {
			v.fail(key, f, "want IFACE or IFACE:CIDR with an interface name of at most 15 characters")
			continue
		}
		vn := VNet{Interface: name}
		if hasCIDR {
			pfx, err := ParsePrefix(cidr)
			if err != nil {
				v.fail(key, f, fmt.Sprintf("%q is not a CIDR", cidr))
				continue
			}
			vn.CIDR = pfx
		}
		if contains(excluded, name) {
			v.fail(key, f, "interface "+name+" is also in excludeInterfaces")
			continue
		}
		if slices.ContainsFunc(out, func(o VNet) bool { return o.Interface == name && o.CIDR == vn.CIDR }) {
			continue
		}
		out = append(out, vn)
	}
	return out
}

func (v *validator) packetLog(key string) *PacketLog {
	s := strings.TrimSpace(v.c.Get(key))
	target, arg, hasArg := strings.Cut(s, ":")
	switch {
	case s == "" || s == "off":
		return nil
	case s == "kernel":
		return &PacketLog{Target: "kernel"}
	case target == "nflog":
		l := &PacketLog{Target: "nflog"}
		if hasArg {
			n, err := strconv.ParseUint(arg, 10, 16)
			if err != nil {
				v.fail(key, s, "the NFLOG group must be a number from 0 to 65535")
				return nil
			}
			l.Group = uint16(n)
		}
		return l
	}
	v.fail(key, s, "want off, nflog, nflog:GROUP or kernel")
	return nil
}

func (v *validator) xtables() {
	if _, err := v.c.XtablesLockWait(); err != nil {
		v.fail("xtablesLockWait", v.c.Get("xtablesLockWait"), err.Error())
	}
	if _, err := v.c.XtablesRetries(); err != nil {
		v.fail("xtablesRetries", v.c.Get("xtablesRetries"), err.Error())
	}
}

// XtablesLockWait is how long each iptables-restore waits for the xtables
// lock: a Go duration or a number of seconds, whole seconds from 1s to 10m
// (iptables counts in seconds).
func (c *Config) XtablesLockWait() (time.Duration, error) {
	s := strings.TrimSpace(c.Get("xtablesLockWait"))
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.ParseUint(s, 10, 32)
		if nerr != nil {
			return 0, errors.New("want a duration such as 5s, or a number of seconds")
		}
		d = time.Duration(n) * time.Second
	}
	if d < time.Second || d > 10*time.Minute || d%time.Second != 0 {
		return 0, errors.New("want whole seconds from 1s to 10m")
	}
	return d, nil
}

// XtablesRetries is how often a change is retried after a transient
// failure (lock timeout, a concurrent writer).
func (c *Config) XtablesRetries() (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(c.Get("xtablesRetries")))
	if err != nil || n < 0 || n > 20 {
		return 0, errors.New("want a number from 0 to 20")
	}
	return n, nil
}

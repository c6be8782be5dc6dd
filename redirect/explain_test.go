package redirect

import (
	"net/netip"
	"strings"
	"testing"
)

func TestExplain(t *testing.T) {
	cfg := NewConfig()
	for k, v := range map[string]string{
		"excludeOutboundPorts":        "22",
		"excludeOutboundCidrs":        "10.9.0.0/16",
		"excludeInboundPorts":         "9090",
		"excludeInboundCidrs":         "192.168.7.0/24",
		"excludeOutboundPortsForUids": "tcp:8082:1001",
		"excludeInterfaces":           "eth9",
		"proxyGID":                    "1337",
	} {
		if err := cfg.Set(k, v, "test"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := cfg.Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	gid := uint32(1337)
	out := func(dst string) Packet {
		return Packet{Direction: Outbound, Proto: "tcp", Dst: netip.MustParseAddrPort(dst), UID: 1000, Iface: "eth0"}
	}
	cases := []struct {
		name   string
		pkt    Packet
		action Action
		port   uint16
		reason string
	}{
		{"app tcp", out("10.1.0.2:443"), Redirect, 15001, "outbound"},
		{"app tcp v6", out("[fd00::2]:443"), Redirect, 15001, "outbound"},
		{"excluded port", out("10.1.0.2:22"), Pass, 0, "excludeOutboundPorts"},
		{"excluded cidr", out("10.9.3.4:443"), Pass, 0, "excludeOutboundCidrs"},
		{"proxy uid", func() Packet { p := out("10.1.0.2:443"); p.UID = 5678; return p }(), Pass, 0, "proxyUID"},
		{"proxy gid", func() Packet { p := out("10.1.0.2:443"); p.GID = &gid; return p }(), Pass, 0, "proxyGID"},
		{"bypass mark", func() Packet { p := out("10.1.0.2:443"); p.Mark = DefaultBypassMark; return p }(), Pass, 0, "bypassMark"},
		{"uid+port exclusion", func() Packet { p := out("10.1.0.2:8082"); p.UID = 1001; return p }(), Pass, 0, "excludeOutboundPortsForUids"},
		{"uid exclusion other port", func() Packet { p := out("10.1.0.2:8080"); p.UID = 1001; return p }(), Redirect, 15001, ""},
		{"excluded interface", func() Packet { p := out("10.1.0.2:443"); p.Iface = "eth9"; return p }(), Pass, 0, "excludeInterfaces"},
		{"dns to resolver", func() Packet { p := out("10.96.0.10:53"); p.Proto = "udp"; return p }(), Redirect, 15053, "nameserver"},
		{"dns v6 to resolver", func() Packet { p := out("[fd00::a]:53"); p.Proto = "udp"; return p }(), Redirect, 15053, "nameserver"},
		{"dns to other server", func() Packet { p := out("8.8.8.8:53"); p.Proto = "udp"; return p }(), Pass, 0, "only TCP"},
		{"proxy dns", func() Packet { p := out("10.96.0.10:53"); p.Proto = "udp"; p.UID = 5678; return p }(), Pass, 0, "proxyUID"},
		{"local app", func() Packet { p := out("127.0.0.1:8080"); p.Iface = "lo"; return p }(), Pass, 0, "loopback"},
		{"proxy to own ip", Packet{Direction: Outbound, Proto: "tcp", Dst: netip.MustParseAddrPort("10.1.0.1:8080"), UID: 5678, Iface: "lo"}, Redirect, 15006, "inbound"},
		{"inbound passthrough", Packet{Direction: Outbound, Proto: "tcp", Src: InboundPassthroughV4, Dst: netip.MustParseAddrPort("10.1.0.1:8080"), UID: 5678, Iface: "lo"}, Pass, 0, "passthrough"},
		{"inbound", Packet{Direction: Inbound, Proto: "tcp", Src: netip.MustParseAddr("10.1.0.9"), Dst: netip.MustParseAddrPort("10.1.0.1:8080"), Iface: "eth0"}, Redirect, 15006, "inbound"},
		{"inbound excluded port", Packet{Direction: Inbound, Proto: "tcp", Dst: netip.MustParseAddrPort("10.1.0.1:9090"), Iface: "eth0"}, Pass, 0, "excludeInboundPorts"},
		{"inbound excluded source", Packet{Direction: Inbound, Proto: "tcp", Src: netip.MustParseAddr("192.168.7.7"), Dst: netip.MustParseAddrPort("10.1.0.1:8080"), Iface: "eth0"}, Pass, 0, "excludeInboundCidrs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := p.Explain(c.pkt)
			if v.Action != c.action || v.Port != c.port || !strings.Contains(v.Reason, c.reason) {
				t.Errorf("Explain = %+v, want %s %d mentioning %q", v, c.action, c.port, c.reason)
			}
		})
	}

	locked := p.Clone()
	locked.Egress = &Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}
	if v := locked.Explain(out("10.9.3.4:443")); v.Action != Reject {
		t.Errorf("lockdown: excluded but not allowed destination = %+v, want reject", v)
	}
	if v := locked.Explain(out("203.0.113.5:22")); v.Action != Pass {
		t.Errorf("lockdown: allowed destination = %+v, want pass", v)
	}
	proxy := out("198.51.100.1:443")
	proxy.UID = 5678
	if v := locked.Explain(proxy); v.Action != Reject {
		t.Errorf("lockdown: the proxy to a non-mesh address = %+v, want reject", v)
	}
	proxy.Dst = netip.MustParseAddrPort("203.0.113.5:443")
	if v := locked.Explain(proxy); v.Action != Pass {
		t.Errorf("lockdown: the proxy to an allowed endpoint = %+v, want pass", v)
	}
	// An endpoint opens its TCP port only, not its host.
	locked.Egress.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:443"), netip.MustParseAddrPort("[2001:db8::7]:8443")}
	for dst, want := range map[string]Action{
		"198.51.100.7:443":          Pass,
		"198.51.100.7:80":           Reject,
		"198.51.100.8:443":          Reject,
		"[2001:db8::7]:8443":        Pass,
		"[2001:db8::7]:443":         Reject,
		"[::ffff:198.51.100.7]:443": Pass,
	} {
		proxy.Dst = netip.MustParseAddrPort(dst)
		proxy.Proto = "tcp"
		if v := locked.Explain(proxy); v.Action != want {
			t.Errorf("lockdown: the proxy to %s with endpoints %v = %+v, want %s", dst, locked.Egress.Endpoints, v, want)
		}
	}
	proxy.Dst, proxy.Proto = netip.MustParseAddrPort("198.51.100.7:443"), "udp"
	if v := locked.Explain(proxy); v.Action != Reject {
		t.Errorf("lockdown: UDP to a TCP endpoint = %+v, want reject", v)
	}
	if err := (&Egress{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:0")}}).Validate(); err == nil {
		t.Error("an endpoint without a port validated")
	}
	dnsUp := out("10.96.0.10:53")
	dnsUp.Proto, dnsUp.Mark = "udp", DefaultBypassMark
	if v := locked.Explain(dnsUp); v.Action != Pass {
		t.Errorf("lockdown: the interceptor's upstream query = %+v, want pass", v)
	}
}

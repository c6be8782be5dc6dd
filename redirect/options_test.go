package redirect

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func planOf(t *testing.T, set map[string]string) (*Plan, error) {
	t.Helper()
	c := NewConfig()
	for k, v := range set {
		if err := c.Set(k, v, "test"); err != nil {
			t.Fatal(err)
		}
	}
	return c.Plan(testHost())
}

func TestOptionalFeaturesParse(t *testing.T) {
	p, err := planOf(t, map[string]string{
		"inboundMode":          "tproxy",
		"tproxyMark":           "0x77",
		"tproxyRouteTable":     "300",
		"dropInvalid":          "true",
		"includeOutboundCidrs": "10.0.0.0/8, fd00::/8",
		"includeOutboundPorts": "443,8000-8010",
		"includeInboundPorts":  "8080",
		"vnetInterfaces":       "docker0:172.17.0.0/16,tap0,br1:fd00:17::/64",
		"packetLog":            "nflog:7",
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.InboundTProxy == nil || *p.InboundTProxy != (TProxy{Mark: 0x77, RouteTable: 300}) {
		t.Errorf("InboundTProxy = %+v", p.InboundTProxy)
	}
	if !p.DropInvalid || len(p.IncludeOutboundCIDRs) != 2 || len(p.IncludeOutboundPorts) != 2 || len(p.IncludeInboundPorts) != 1 {
		t.Errorf("plan = %+v", p)
	}
	want := []VNet{{Interface: "docker0", CIDR: netip.MustParsePrefix("172.17.0.0/16")}, {Interface: "tap0"}, {Interface: "br1", CIDR: netip.MustParsePrefix("fd00:17::/64")}}
	if len(p.VNets) != 3 || p.VNets[0] != want[0] || p.VNets[1] != want[1] || p.VNets[2] != want[2] {
		t.Errorf("VNets = %v, want %v", p.VNets, want)
	}
	if p.PacketLog == nil || p.PacketLog.String() != "nflog:7" {
		t.Errorf("PacketLog = %v", p.PacketLog)
	}
	var keys []string
	for _, f := range p.Features() {
		keys = append(keys, f.Key)
	}
	if got := strings.Join(keys, ","); got != "inboundMode,dropInvalid,includeOutboundCidrs,includeOutboundPorts,includeInboundPorts,vnetInterfaces,packetLog" {
		t.Errorf("Features = %s", got)
	}
	// A copy shares nothing, and a plan without the features marshals
	// as before (no new keys).
	c := p.Clone()
	c.InboundTProxy.Mark, c.VNets[0].Interface, c.PacketLog.Group = 1, "x", 1
	if p.InboundTProxy.Mark != 0x77 || p.VNets[0].Interface != "docker0" || p.PacketLog.Group != 7 {
		t.Error("Clone shares the optional features with the original")
	}
	def, _ := planOf(t, nil)
	for _, k := range []string{"inboundTproxy", "dropInvalid", "include", "vnets", "packetLog"} {
		if strings.Contains(mustJSON(def), k) {
			t.Errorf("default plan JSON mentions %s: %s", k, mustJSON(def))
		}
	}
}

func TestOptionalFeaturesValidation(t *testing.T) {
	cases := []struct {
		name string
		set  map[string]string
		want []string
	}{
		{"inbound mode", map[string]string{"inboundMode": "nat"}, []string{"inboundMode", `"nat"`, "redirect or tproxy"}},
		{"tproxy without inbound", map[string]string{"inboundMode": "tproxy", "noInbound": "true"}, []string{"inboundMode", "noInbound"}},
		{"tproxy mark zero", map[string]string{"inboundMode": "tproxy", "tproxyMark": "0"}, []string{"tproxyMark", `"0"`, "non-zero"}},
		{"tproxy mark is bypass", map[string]string{"inboundMode": "tproxy", "tproxyMark": "0x5348"}, []string{"tproxyMark", "bypassMark"}},
		{"tproxy main table", map[string]string{"inboundMode": "tproxy", "tproxyRouteTable": "254"}, []string{"tproxyRouteTable", `"254"`, "main"}},
		{"tproxy mark without tproxy", map[string]string{"tproxyMark": "7"}, []string{"tproxyMark", "only used with inboundMode tproxy"}},
		{"include cidr", map[string]string{"includeOutboundCidrs": "10.0.0.0/33"}, []string{"includeOutboundCidrs", `"10.0.0.0/33"`}},
		{"include port", map[string]string{"includeOutboundPorts": "0"}, []string{"includeOutboundPorts", `"0"`}},
		{"include inbound without inbound", map[string]string{"includeInboundPorts": "80", "noInbound": "true"}, []string{"includeInboundPorts", "noInbound"}},
		{"vnet cidr", map[string]string{"vnetInterfaces": "docker0:172.17.0.0/99"}, []string{"vnetInterfaces", `"docker0:172.17.0.0/99"`, "not a CIDR"}},
		{"vnet name", map[string]string{"vnetInterfaces": "a-very-long-interface-name"}, []string{"vnetInterfaces", "15 characters"}},
		{"vnet excluded", map[string]string{"vnetInterfaces": "eth1", "excludeInterfaces": "eth1"}, []string{"vnetInterfaces", "excludeInterfaces"}},
		{"packet log", map[string]string{"packetLog": "syslog"}, []string{"packetLog", `"syslog"`, "nflog"}},
		{"packet log group", map[string]string{"packetLog": "nflog:70000"}, []string{"packetLog", "0 to 65535"}},
		{"lock wait", map[string]string{"xtablesLockWait": "1.5s"}, []string{"xtablesLockWait", `"1.5s"`, "whole seconds"}},
		{"lock wait text", map[string]string{"xtablesLockWait": "soon"}, []string{"xtablesLockWait", `"soon"`}},
		{"retries", map[string]string{"xtablesRetries": "-1"}, []string{"xtablesRetries", `"-1"`, "0 to 20"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := planOf(t, c.set)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// Every new key has its flag and SHUNT_ variable, and the variable sets it.
func TestOptionalFeatureKeysOnEverySurface(t *testing.T) {
	want := map[string][2]string{
		"inboundMode":          {"inbound-mode", "SHUNT_INBOUND_MODE"},
		"tproxyMark":           {"tproxy-mark", "SHUNT_TPROXY_MARK"},
		"tproxyRouteTable":     {"tproxy-route-table", "SHUNT_TPROXY_ROUTE_TABLE"},
		"dropInvalid":          {"drop-invalid", "SHUNT_DROP_INVALID"},
		"includeOutboundCidrs": {"include-outbound-cidrs", "SHUNT_INCLUDE_OUTBOUND_CIDRS"},
		"includeOutboundPorts": {"include-outbound-ports", "SHUNT_INCLUDE_OUTBOUND_PORTS"},
		"includeInboundPorts":  {"include-inbound-ports", "SHUNT_INCLUDE_INBOUND_PORTS"},
		"vnetInterfaces":       {"vnet-interfaces", "SHUNT_VNET_INTERFACES"},
		"packetLog":            {"packet-log", "SHUNT_PACKET_LOG"},
		"xtablesLockWait":      {"xtables-lock-wait", "SHUNT_XTABLES_LOCK_WAIT"},
		"xtablesRetries":       {"xtables-retries", "SHUNT_XTABLES_RETRIES"},
	}
	found := 0
	for _, o := range Options() {
		if w, ok := want[o.Key]; ok {
			found++
			if o.Flag != w[0] || o.Env != w[1] {
				t.Errorf("%s: flag %q env %q, want %q %q", o.Key, o.Flag, o.Env, w[0], w[1])
			}
		}
	}
	if found != len(want) {
		t.Errorf("%d of %d keys found", found, len(want))
	}
	c := NewConfig()
	if err := c.LoadEnv([]string{"SHUNT_DROP_INVALID=1", "SHUNT_VNET_INTERFACES=tap0", "SHUNT_INBOUND_MODE=tproxy"}); err != nil {
		t.Fatal(err)
	}
	p, err := c.Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	if !p.DropInvalid || len(p.VNets) != 1 || p.InboundTProxy == nil {
		t.Errorf("environment did not set the keys: %+v", p)
	}
}

func TestXtablesOptions(t *testing.T) {
	c := NewConfig()
	if d, err := c.XtablesLockWait(); err != nil || d != DefaultXtablesLockWait {
		t.Errorf("default lock wait = %v, %v", d, err)
	}
	_ = c.Set("xtablesLockWait", "3", "test")
	if d, _ := c.XtablesLockWait(); d != 3*time.Second {
		t.Errorf("lock wait 3 = %v, want 3s", d)
	}
	_ = c.Set("xtablesRetries", "0", "test")
	if n, err := c.XtablesRetries(); err != nil || n != 0 {
		t.Errorf("retries 0 = %d, %v", n, err)
	}
}

func TestExplainOptionalFeatures(t *testing.T) {
	p, err := planOf(t, map[string]string{
		"inboundMode":          "tproxy",
		"includeOutboundCidrs": "10.0.0.0/8",
		"includeOutboundPorts": "443",
		"includeInboundPorts":  "8080",
		"vnetInterfaces":       "docker0:172.17.0.0/16",
	})
	if err != nil {
		t.Fatal(err)
	}
	out := func(dst string) Packet {
		return Packet{Direction: Outbound, Proto: "tcp", Dst: netip.MustParseAddrPort(dst), UID: 1000, Iface: "eth0"}
	}
	in := func(iface, dst string) Packet {
		return Packet{Direction: Inbound, Proto: "tcp", Src: netip.MustParseAddr("10.1.0.9"), Dst: netip.MustParseAddrPort(dst), Iface: iface}
	}
	cases := []struct {
		name   string
		pkt    Packet
		action Action
		port   uint16
		reason string
	}{
		{"included", out("10.1.0.2:443"), Redirect, 15001, "outbound"},
		{"cidr not included", out("192.0.2.1:443"), Pass, 0, "includeOutboundCidrs"},
		{"port not included", out("10.1.0.2:80"), Pass, 0, "includeOutboundPorts"},
		{"v6 not included", out("[fd00::2]:443"), Pass, 0, "includeOutboundCidrs"},
		{"dns still captured", func() Packet { p := out("10.96.0.10:53"); p.Proto = "udp"; return p }(), Redirect, 15053, "nameserver"},
		{"tproxy mark", func() Packet {
			p := out("10.1.0.1:8080")
			p.Mark, p.UID, p.Iface = DefaultTProxyMark, 5678, "lo"
			return p
		}(), Pass, 0, "tproxyMark"},
		{"inbound tproxy", in("eth0", "10.1.0.1:8080"), Redirect, 15006, "TPROXY"},
		{"inbound port not included", in("eth0", "10.1.0.1:9000"), Pass, 0, "includeInboundPorts"},
		{"vnet outbound", in("docker0", "10.1.0.2:443"), Redirect, 15001, "vnetInterfaces"},
		{"vnet inside", in("docker0", "172.17.0.5:443"), Pass, 0, "nested network"},
		{"vnet not included", in("docker0", "192.0.2.1:443"), Pass, 0, "includeOutboundCidrs"},
		{"vnet dns", func() Packet { p := in("docker0", "10.96.0.10:53"); p.Proto = "udp"; return p }(), Redirect, 15053, "nameserver"},
		{"vnet dns elsewhere", func() Packet { p := in("docker0", "192.0.2.53:53"); p.Proto = "udp"; return p }(), Pass, 0, "only TCP"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := p.Explain(c.pkt)
			if v.Action != c.action || v.Port != c.port || !strings.Contains(v.Reason, c.reason) {
				t.Errorf("Explain = %+v, want %s %d mentioning %q", v, c.action, c.port, c.reason)
			}
		})
	}
}

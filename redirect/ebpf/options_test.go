package ebpf

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
)

// Every optional feature the programs do not implement is refused by its
// key, with the value and a reason, before anything is loaded.
func TestOptionalFeaturesAreRefusedByName(t *testing.T) {
	cases := []struct {
		key  string
		plan redirect.Plan
		why  string
	}{
		{"inboundMode", redirect.Plan{InboundTProxy: &redirect.TProxy{Mark: 1, RouteTable: 133}}, "already keeps the client's"},
		{"dropInvalid", redirect.Plan{DropInvalid: true}, "does not NAT"},
		{"includeOutboundCidrs", redirect.Plan{IncludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, "iptables"},
		{"includeOutboundPorts", redirect.Plan{IncludeOutboundPorts: []redirect.PortRange{{First: 443, Last: 443}}}, "iptables"},
		{"includeInboundPorts", redirect.Plan{IncludeInboundPorts: []redirect.PortRange{{First: 80, Last: 80}}}, "iptables"},
		{"vnetInterfaces", redirect.Plan{VNets: []redirect.VNet{{Interface: "docker0"}}}, "forwarded"},
		{"packetLog", redirect.Plan{PacketLog: &redirect.PacketLog{Target: "nflog"}}, "stats"},
	}
	for _, c := range cases {
		t.Run(c.key, func(t *testing.T) {
			_, err := desired(&c.plan, nil)
			if err == nil || !strings.Contains(err.Error(), c.key+": invalid value") || !strings.Contains(err.Error(), c.why) {
				t.Errorf("desired = %v, want a refusal of %s mentioning %q", err, c.key, c.why)
			}
			if Supported(&c.plan) == nil {
				t.Errorf("Supported accepted %s", c.key)
			}
		})
	}
	if err := Supported(&redirect.Plan{}); err != nil {
		t.Errorf("Supported refused a plain plan: %v", err)
	}
}

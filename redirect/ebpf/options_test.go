package ebpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
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

// The include-only lists are implemented: a config flag each and the
// port table's include bits, plus a trie of included CIDRs.
func TestIncludeOnlyListsFillTheMaps(t *testing.T) {
	p := &redirect.Plan{
		IncludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		IncludeOutboundPorts: []redirect.PortRange{{First: 443, Last: 444}},
		IncludeInboundPorts:  []redirect.PortRange{{First: 8080, Last: 8080}},
		ExcludeOutboundPorts: []redirect.PortRange{{First: 444, Last: 444}},
	}
	cs, err := desired(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*contents{}
	for _, c := range cs {
		byName[c.name] = c
	}
	var cfg captureConfig
	for _, e := range byName["config_map"].entries {
		if err := binary.Read(bytes.NewReader(e.value), binary.NativeEndian, &cfg); err != nil {
			t.Fatal(err)
		}
	}
	if want := uint32(cfgIncludeOutCIDRs | cfgIncludeOutPorts | cfgIncludeInPorts); cfg.Flags&want != want {
		t.Errorf("config flags %#x lack the include flags %#x", cfg.Flags, want)
	}
	ports := strings.Join(byName["port_flags"].lines(), "\n")
	for _, want := range []string{"  443: outbound included", "  444: outbound excluded, outbound included", " 8080: inbound included"} {
		if !strings.Contains(ports, want) {
			t.Errorf("port_flags lacks %q:\n%s", want, ports)
		}
	}
	if got := byName["include_out_cidrs"].lines(); len(got) != 1 || !strings.HasPrefix(got[0], "10.0.0.0/8") {
		t.Errorf("include_out_cidrs = %v", got)
	}
}

// The admin port reaches the bind hooks through the config; 0 leaves it
// unguarded.
func TestAdminPortIsInTheConfig(t *testing.T) {
	for _, port := range []uint16{redirect.DefaultAdminPort, 0} {
		cs, err := desired(&redirect.Plan{AdminPort: port}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.name != "config_map" {
				continue
			}
			var cfg captureConfig
			for _, e := range c.entries {
				if err := binary.Read(bytes.NewReader(e.value), binary.NativeEndian, &cfg); err != nil {
					t.Fatal(err)
				}
			}
			if cfg.AdminPort != port {
				t.Errorf("adminPort %d: config holds %d", port, cfg.AdminPort)
			}
			want := "admin=off"
			if port != 0 {
				want = fmt.Sprintf("admin=%d", port)
			}
			if got := strings.Join(c.lines(), "\n"); !strings.Contains(got, want) {
				t.Errorf("adminPort %d: config reads %q, want %q in it", port, got, want)
			}
		}
	}
}

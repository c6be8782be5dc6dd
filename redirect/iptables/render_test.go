package iptables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// Scenarios returns plans that exercise every rule the renderer writes.
func scenarios(t *testing.T) map[string]*redirect.Plan {
	t.Helper()
	mk := func(set map[string]string, mutate func(*redirect.Plan)) *redirect.Plan {
		c := redirect.NewConfig()
		_ = c.Set("resolvConf", "testdata/resolv.conf", "test")
		for k, v := range set {
			if err := c.Set(k, v, "test"); err != nil {
				t.Fatal(err)
			}
		}
		p, err := c.Plan(redirect.OSHost{})
		if err != nil {
			t.Fatal(err)
		}
		if mutate != nil {
			mutate(p)
		}
		return p
	}
	return map[string]*redirect.Plan{
		"default": mk(nil, nil),
		"exclusions": mk(map[string]string{
			"proxyGID":                    "1337",
			"excludeInboundPorts":         "9090,15020-15021",
			"excludeOutboundPorts":        "1,2,3,4,5,6,7,8,9,10,11,12,13,14,20-30",
			"excludeInboundCidrs":         "192.168.0.0/16,fd00:7::/64",
			"excludeOutboundCidrs":        "10.9.0.0/16,fd00:9::/64",
			"excludeOutboundPortsForUids": "tcp:22:1000-1002;all:5432:1003",
			"excludeInterfaces":           "eth9",
		}, nil),
		"all-dns-no-inbound":  mk(map[string]string{"redirectAllDNS": "true", "noInbound": "true", "bypassMark": "0"}, nil),
		"no-dns-custom-ports": mk(map[string]string{"noDNS": "true", "inboundPort": "16006", "outboundPort": "16001", "dnsPort": "16053", "proxyUID": "1337"}, nil),
		"ipv4-only":           mk(map[string]string{"ipFamily": "ipv4"}, nil),
		"tproxy": mk(map[string]string{
			"inboundMode":         "tproxy",
			"excludeInboundPorts": "9090",
			"excludeInboundCidrs": "192.168.0.0/16",
			"includeInboundPorts": "8080,8443-8444",
		}, nil),
		"include-only": mk(map[string]string{
			"includeOutboundCidrs": "10.0.0.0/8,192.168.1.0/24,fd00:10::/64",
			"includeOutboundPorts": "80,443,8000-8100",
			"includeInboundPorts":  "8080",
			"excludeOutboundPorts": "8081",
		}, nil),
		"include-ports-v4-cidrs": mk(map[string]string{
			"includeOutboundCidrs": "10.0.0.0/8",
			"includeOutboundPorts": "443",
		}, nil),
		"vnet": mk(map[string]string{
			"vnetInterfaces": "docker0:172.17.0.0/16,tap0,br1:fd00:17::/64",
		}, nil),
		"vnet-tproxy": mk(map[string]string{
			"vnetInterfaces": "docker0:172.17.0.0/16",
			"inboundMode":    "tproxy",
			"tproxyMark":     "0x77",
		}, nil),
		"drop-invalid-nflog": mk(map[string]string{"dropInvalid": "true", "packetLog": "nflog:5", "inboundMode": "tproxy", "meshCidrs": "10.244.0.0/16"}, func(p *redirect.Plan) {
			p.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("240.0.0.0/4")}}
		}),
		"packet-log-kernel": mk(map[string]string{"packetLog": "kernel", "redirectAllDNS": "true"}, nil),
		"lockdown": mk(map[string]string{"meshCidrs": "10.244.0.0/16,10.96.0.0/12,fd00:244::/56"}, func(p *redirect.Plan) {
			p.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("240.0.0.0/4"), netip.MustParsePrefix("10.1.0.9/32"), netip.MustParsePrefix("fd00:f::/48")},
				Endpoints: []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:443"), netip.MustParseAddrPort("[::ffff:203.0.113.6]:8443"), netip.MustParseAddrPort("[fd00:e::5]:443")}}
		}),
	}
}

func TestRenderGolden(t *testing.T) {
	for name, p := range scenarios(t) {
		t.Run(name, func(t *testing.T) {
			var b strings.Builder
			for _, v6 := range []bool{false, true} {
				if v6 && p.IPFamily != redirect.FamilyDual {
					continue
				}
				label := "ipv4"
				if v6 {
					label = "ipv6"
				}
				b.WriteString("# " + label + "\n")
				b.WriteString(RestoreInput(newRuleset(), Render(p, v6)))
			}
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if b.String() != string(want) {
				t.Errorf("rendering changed; diff against %s (go test -update to accept):\n%s", golden, b.String())
			}
		})
	}
}

func TestRenderedRulesetParsesBackEqual(t *testing.T) {
	for name, p := range scenarios(t) {
		rs := Render(p, false)
		// What iptables-save would print after applying the batch.
		var save strings.Builder
		for _, table := range sortedTables(rs.Tables) {
			save.WriteString("*" + table + "\n:OUTPUT ACCEPT [0:0]\n")
			for _, c := range sortedKeys(rs.Tables[table].Chains) {
				save.WriteString(":" + c + " - [0:0]\n")
			}
			for _, j := range rs.Tables[table].Jumps {
				save.WriteString("-A " + j + "\n")
			}
			for _, c := range sortedKeys(rs.Tables[table].Chains) {
				for _, r := range rs.Tables[table].Chains[c] {
					save.WriteString("-A " + c + " " + r + "\n")
				}
			}
			save.WriteString("-A OUTPUT -p tcp --dport 1 -j ACCEPT\nCOMMIT\n")
		}
		d, err := ParseSave(save.String())
		if err != nil {
			t.Fatal(err)
		}
		if d.Shunt.String() != rs.String() {
			t.Errorf("%s: parsed ruleset differs:\n%s\nwant:\n%s", name, d.Shunt.String(), rs.String())
		}
		if d.ForeignLen != len(rs.Tables) {
			t.Errorf("%s: foreign rules = %d, want %d", name, d.ForeignLen, len(rs.Tables))
		}
	}
}

func TestRestoreInputTransitions(t *testing.T) {
	plans := scenarios(t)
	a, b := Render(plans["default"], false), Render(plans["lockdown"], false)
	if got := RestoreInput(a, a); got != "" {
		t.Errorf("same ruleset gives a batch:\n%s", got)
	}
	if got := RestoreInput(a, b); strings.Contains(got, "*nat") {
		t.Errorf("adding lockdown rewrites the unchanged nat table:\n%s", got)
	}
	up := RestoreInput(a, Render(plans["exclusions"], false))
	// Chains are refilled in the batch; jumps that stay are not touched.
	if strings.Contains(up, "-D OUTPUT") || strings.Contains(up, "-A OUTPUT") || !strings.Contains(up, ":SHUNT_OUTPUT - [0:0]") {
		t.Errorf("update batch touches unchanged jumps or misses a chain:\n%s", up)
	}
	if up := RestoreInput(a, b); !strings.Contains(up, "*filter\n:SHUNT_EGRESS - [0:0]") {
		t.Errorf("update batch lacks the new filter chain:\n%s", up)
	}
	down := RestoreInput(b, newRuleset())
	for _, want := range []string{"-X SHUNT_EGRESS", "-X SHUNT_OUTPUT", "-D PREROUTING -p tcp -m comment --comment shunt-managed -j SHUNT_INBOUND"} {
		if !strings.Contains(down, want) {
			t.Errorf("removal batch lacks %q:\n%s", want, down)
		}
	}
	if strings.Contains(down, "-A ") {
		t.Errorf("removal batch adds rules:\n%s", down)
	}
}

func TestMultiportSplitsAtFifteenPorts(t *testing.T) {
	var ranges []redirect.PortRange
	for i := uint16(1); i <= 14; i++ {
		ranges = append(ranges, redirect.PortRange{First: i, Last: i})
	}
	ranges = append(ranges, redirect.PortRange{First: 20, Last: 30})
	got := multiport(ranges)
	if len(got) != 2 || got[1] != "20:30" || strings.Count(got[0], ",") != 13 {
		t.Errorf("multiport = %q", got)
	}
}

func TestParseSaveIgnoresForeignCommentsAndCounters(t *testing.T) {
	out := `# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:SHUNT_OUTPUT - [0:0]
:KUBE-SERVICES - [0:0]
[5:300] -A OUTPUT -m comment --comment shunt-managed -j SHUNT_OUTPUT
[0:0] -A OUTPUT -m comment --comment "not shunt" -j KUBE-SERVICES
[1:60] -A SHUNT_OUTPUT -p tcp -j RETURN
COMMIT
`
	d, err := ParseSave(out)
	if err != nil {
		t.Fatal(err)
	}
	want := "*nat\n:SHUNT_OUTPUT\n-A OUTPUT -m comment --comment shunt-managed -j SHUNT_OUTPUT\n-A SHUNT_OUTPUT -p tcp -j RETURN\n"
	if d.Shunt.String() != want || d.ForeignLen != 1 {
		t.Errorf("parsed %q (foreign %d), want %q (foreign 1)", d.Shunt.String(), d.ForeignLen, want)
	}
}

package nftables

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

// scenarios returns plans that exercise every rule the renderer writes:
// the iptables engine's scenarios, so the two can be read side by side.
func scenarios(t testing.TB) map[string]*redirect.Plan {
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
			"excludeOutboundCidrs":        "10.9.0.0/16,fd00:9::/64,10.9.3.0/24,10.10.0.0/16,172.16.0.1/32",
			"excludeOutboundPortsForUids": "tcp:22:1000-1002;all:5432:1003",
			"excludeInterfaces":           "eth9,veth+",
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
			"vnetInterfaces": "docker0:172.17.0.0/16,tap0,br1:fd00:17::/64,vm+:10.3.0.0/20",
		}, nil),
		"vnet-tproxy": mk(map[string]string{
			"vnetInterfaces": "docker0:172.17.0.0/16",
			"inboundMode":    "tproxy",
			"tproxyMark":     "0x77",
		}, nil),
		"drop-invalid-nflog": mk(map[string]string{"dropInvalid": "true", "packetLog": "nflog:5", "inboundMode": "tproxy", "meshCidrs": "10.244.0.0/16"}, func(p *redirect.Plan) {
			p.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("240.0.0.0/4")}}
		}),
		"packet-log-kernel": mk(map[string]string{"packetLog": "kernel", "redirectAllDNS": "true", "vnetInterfaces": "docker0", "includeOutboundPorts": "443"}, nil),
		"nflog-group0-lockdown-include": mk(map[string]string{"packetLog": "nflog", "includeOutboundCidrs": "10.0.0.0/8", "dropInvalid": "true", "ipFamily": "ipv4", "meshCidrs": "10.244.0.0/16"}, func(p *redirect.Plan) {
			p.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("240.0.0.0/4")}}
		}),
		"lockdown": mk(map[string]string{"meshCidrs": "10.244.0.0/16,10.96.0.0/12,fd00:244::/56"}, func(p *redirect.Plan) {
			p.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("240.0.0.0/4"), netip.MustParsePrefix("10.1.0.9/32"), netip.MustParsePrefix("fd00:f::/48")},
				Endpoints: []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:443"), netip.MustParseAddrPort("[::ffff:203.0.113.6]:8443"), netip.MustParseAddrPort("[fd00:e::5]:443")}}
		}),
	}
}

func TestRenderGolden(t *testing.T) {
	for name, p := range scenarios(t) {
		t.Run(name, func(t *testing.T) {
			got := Render(p).String()
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("rendering changed; diff against %s (go test -update to accept):\n%s", golden, got)
			}
		})
	}
}

func TestIntervalsMergeAndEndElements(t *testing.T) {
	s := newAddrSet("x", v4, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"), // contained
		netip.MustParsePrefix("11.0.0.0/8"), // touching: one interval
		netip.MustParsePrefix("192.168.1.7/32"),
		netip.MustParsePrefix("fd00::/8"), // other family: left out
	})
	if got := strings.Join(s.text(), ", "); got != "10.0.0.0/7, 192.168.1.7" {
		t.Errorf("elements %q", got)
	}
	// nft's encoding: an end at zero, then start and end+1 of each interval.
	var keys []string
	for _, e := range s.elems {
		keys = append(keys, elementText(kindAddr4, e))
	}
	if got := strings.Join(keys, ","); got != "end 0.0.0.0,10.0.0.0,end 12.0.0.0,192.168.1.7,end 192.168.1.8" {
		t.Errorf("keys %s", got)
	}
	all := newAddrSet("all", v6, []netip.Prefix{netip.MustParsePrefix("::/0")})
	if len(all.elems) != 1 || all.elems[0].IntervalEnd || all.text()[0] != "::/0" {
		t.Errorf("::/0 gives %v %v", all.text(), all.elems)
	}
	// Touching at a byte boundary, and a mapped IPv4 prefix in the IPv4 set.
	tb := newAddrSet("tb", v4, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("::ffff:10.0.3.0/120")})
	if got := strings.Join(tb.text(), ", "); got != "10.0.0.0/23, 10.0.3.0/24" {
		t.Errorf("touching and mapped prefixes: %q", got)
	}
	r := newAddrSet("r", v4, []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32"), netip.MustParsePrefix("10.0.0.2/31")})
	if r.text()[0] != "10.0.0.1-10.0.0.3" {
		t.Errorf("range printed %q", r.text())
	}
}

func TestCheckRefusesWhatItCannotDo(t *testing.T) {
	p := scenarios(t)["default"]
	if err := Check(p); err != nil {
		t.Fatalf("default plan refused: %v", err)
	}
	// Every optional feature of the plan is implemented.
	for name, q := range scenarios(t) {
		if err := Check(q); err != nil {
			t.Errorf("scenario %s refused: %v", name, err)
		}
	}
	bad := p.Clone()
	bad.ExcludeInterfaces = []string{`a"b`}
	if err := Check(bad); err == nil || !strings.Contains(err.Error(), "excludeInterfaces") {
		t.Errorf("quote in an interface name: %v", err)
	}
	bad = p.Clone()
	bad.VNets = []redirect.VNet{{Interface: `tap*`}}
	if err := Check(bad); err == nil || !strings.HasPrefix(err.Error(), "vnetInterfaces:") {
		t.Errorf("* in a vnet interface name: %v", err)
	}
}

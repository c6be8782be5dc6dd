package redirect

import (
	"errors"
	"io/fs"
	"net/netip"
	"strings"
	"testing"
)

type fakeHost struct {
	files  map[string]string
	users  map[string]uint32
	groups map[string]uint32
}

func (h fakeHost) ReadFile(p string) ([]byte, error) {
	if s, ok := h.files[p]; ok {
		return []byte(s), nil
	}
	return nil, fs.ErrNotExist
}

func (h fakeHost) LookupUser(n string) (uint32, error) {
	if id, ok := h.users[n]; ok {
		return id, nil
	}
	return 0, errors.New("unknown user")
}

func (h fakeHost) LookupGroup(n string) (uint32, error) {
	if id, ok := h.groups[n]; ok {
		return id, nil
	}
	return 0, errors.New("unknown group")
}

func testHost() fakeHost {
	return fakeHost{
		files:  map[string]string{"/etc/resolv.conf": "nameserver 10.96.0.10\nnameserver fd00::a\nsearch default.svc.cluster.local\n"},
		users:  map[string]uint32{"envoy": 101},
		groups: map[string]uint32{"envoy": 102},
	}
}

func TestDefaultsGiveKumaLikePlan(t *testing.T) {
	p, err := NewConfig().Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	if p.InboundPort != 15006 || p.OutboundPort != 15001 || p.DNSPort != 15053 || p.ProxyUID != 5678 {
		t.Errorf("ports/uid = %d %d %d %d", p.InboundPort, p.OutboundPort, p.DNSPort, p.ProxyUID)
	}
	if !p.CaptureInbound || p.DNSMode != DNSResolvers || p.IPFamily != FamilyDual || p.BypassMark != DefaultBypassMark {
		t.Errorf("unexpected defaults: %+v", p)
	}
	want := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")}
	if len(p.DNSServers) != 2 || p.DNSServers[0] != want[0] || p.DNSServers[1] != want[1] {
		t.Errorf("DNS servers = %v, want %v", p.DNSServers, want)
	}
}

func TestPrecedenceFileEnvFlag(t *testing.T) {
	c := NewConfig()
	file := "outboundPort: 16001\ninboundPort: 16006\nexcludeOutboundPorts: [22, 8000-8010]\ndnsPort: 16053\n"
	if err := c.LoadFile("capture.yaml", []byte(file)); err != nil {
		t.Fatal(err)
	}
	if err := c.LoadEnv([]string{"SHUNT_INBOUND_PORT=17006", "SHUNT_DNS_PORT=17053", "PATH=/bin"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Set("dnsPort", "18053", "flag --dns-port"); err != nil {
		t.Fatal(err)
	}
	p, err := c.Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	if p.OutboundPort != 16001 || p.InboundPort != 17006 || p.DNSPort != 18053 {
		t.Errorf("precedence broken: out %d in %d dns %d", p.OutboundPort, p.InboundPort, p.DNSPort)
	}
	if len(p.ExcludeOutboundPorts) != 2 || p.ExcludeOutboundPorts[1] != (PortRange{8000, 8010}) {
		t.Errorf("excludeOutboundPorts = %v", p.ExcludeOutboundPorts)
	}
}

func TestFlagNamesAndEnvNames(t *testing.T) {
	want := map[string][2]string{
		"outboundPort":                {"outbound-port", "SHUNT_OUTBOUND_PORT"},
		"excludeOutboundCidrs":        {"exclude-outbound-cidrs", "SHUNT_EXCLUDE_OUTBOUND_CIDRS"},
		"proxyUID":                    {"proxy-uid", "SHUNT_PROXY_UID"},
		"excludeOutboundPortsForUids": {"exclude-outbound-ports-for-uids", "SHUNT_EXCLUDE_OUTBOUND_PORTS_FOR_UIDS"},
		"redirectAllDNS":              {"redirect-all-dns", "SHUNT_REDIRECT_ALL_DNS"},
		"iptablesBackend":             {"iptables-backend", "SHUNT_IPTABLES_BACKEND"},
	}
	for _, o := range Options() {
		if w, ok := want[o.Key]; ok && (o.Flag != w[0] || o.Env != w[1]) {
			t.Errorf("%s: flag %q env %q, want %q %q", o.Key, o.Flag, o.Env, w[0], w[1])
		}
	}
}

func TestUnknownKeysAreRefused(t *testing.T) {
	c := NewConfig()
	err := c.LoadFile("capture.yaml", []byte("outboundport: 1\n"))
	if err == nil || !strings.Contains(err.Error(), `unknown key "outboundport"`) || !strings.Contains(err.Error(), `did you mean "outboundPort"`) {
		t.Errorf("LoadFile unknown key: %v", err)
	}
}

// kubeletServiceLinks is what kubelet writes into every pod of a namespace
// holding a Service "shunt" (ports dns 53/UDP and http 80/TCP) and a Service
// "shunt-dns" (one unnamed port 53/UDP), as pkg/kubelet/envvars makes them.
var kubeletServiceLinks = []string{
	"SHUNT_SERVICE_HOST=10.96.0.11",
	"SHUNT_SERVICE_PORT=53",
	"SHUNT_SERVICE_PORT_DNS=53",
	"SHUNT_SERVICE_PORT_HTTP=80",
	"SHUNT_PORT=udp://10.96.0.11:53",
	"SHUNT_PORT_53_UDP=udp://10.96.0.11:53",
	"SHUNT_PORT_53_UDP_PROTO=udp",
	"SHUNT_PORT_53_UDP_PORT=53",
	"SHUNT_PORT_53_UDP_ADDR=10.96.0.11",
	"SHUNT_PORT_80_TCP=tcp://10.96.0.11:80",
	"SHUNT_PORT_80_TCP_PROTO=tcp",
	"SHUNT_PORT_80_TCP_PORT=80",
	"SHUNT_PORT_80_TCP_ADDR=10.96.0.11",
	"SHUNT_DNS_SERVICE_HOST=10.96.0.12",
	"SHUNT_DNS_SERVICE_PORT=53",
	"SHUNT_DNS_PORT=udp://10.96.0.12:53",
	"SHUNT_DNS_PORT_53_UDP=udp://10.96.0.12:53",
	"SHUNT_DNS_PORT_53_UDP_PROTO=udp",
	"SHUNT_DNS_PORT_53_UDP_PORT=53",
	"SHUNT_DNS_PORT_53_UDP_ADDR=10.96.0.12",
}

func TestKubernetesServiceLinksAreIgnored(t *testing.T) {
	c := NewConfig()
	env := append([]string{"SHUNT_OUTBOUND_PORT=16001"}, kubeletServiceLinks...)
	if err := c.LoadEnv(env); err != nil {
		t.Fatalf("LoadEnv refused kubelet's service links: %v", err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("service links earned warnings: %q", w)
	}
	p, err := c.Plan(testHost())
	if err != nil {
		t.Fatalf("plan with service links in the environment: %v", err)
	}
	// SHUNT_DNS_PORT=udp://... is shunt-dns's link, not the dnsPort key.
	if p.DNSPort != DefaultDNSPort || p.OutboundPort != 16001 {
		t.Errorf("dns port %d outbound %d, want %d 16001", p.DNSPort, p.OutboundPort, DefaultDNSPort)
	}
}

func TestUnknownVariableWarnsWithClosestKey(t *testing.T) {
	c := NewConfig()
	if err := c.LoadEnv([]string{"SHUNT_OUTBOND_PORT=1", "SHUNT_PROXY_UDI=5"}); err != nil {
		t.Fatalf("an unknown variable must not refuse start: %v", err)
	}
	w := c.Warnings()
	want := []string{
		"environment: ignoring unknown variable SHUNT_OUTBOND_PORT (closest known: SHUNT_OUTBOUND_PORT)",
		"environment: ignoring unknown variable SHUNT_PROXY_UDI (closest known: SHUNT_PROXY_UID)",
	}
	if strings.Join(w, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(w, "\n"), strings.Join(want, "\n"))
	}
	// A known variable with a bad value is still an error.
	if err := NewConfig().LoadEnv([]string{"SHUNT_NO_DNS=maybe"}); err == nil || !strings.Contains(err.Error(), "SHUNT_NO_DNS") {
		t.Errorf("bad value of a known variable: %v", err)
	}
}

func TestValidationNamesFieldAndValue(t *testing.T) {
	cases := []struct {
		name string
		set  map[string]string
		want []string
	}{
		{"port out of range", map[string]string{"outboundPort": "70000"}, []string{"outboundPort", `"70000"`}},
		{"port not a number", map[string]string{"inboundPort": "http"}, []string{"inboundPort", `"http"`}},
		{"same port twice", map[string]string{"inboundPort": "15001"}, []string{"inboundPort", "the same port as outboundPort"}},
		{"bad cidr", map[string]string{"excludeOutboundCidrs": "10.0.0.0/8,10.0.0.300/32"}, []string{"excludeOutboundCidrs", `"10.0.0.300/32"`}},
		{"bad inbound cidr", map[string]string{"excludeInboundCidrs": "fd00::/129"}, []string{"excludeInboundCidrs", `"fd00::/129"`}},
		{"unknown user", map[string]string{"proxyUID": "nobody-here"}, []string{"proxyUID", `"nobody-here"`, "unknown user"}},
		{"unknown group", map[string]string{"proxyGID": "nogroup-here"}, []string{"proxyGID", "unknown group"}},
		{"conflicting dns", map[string]string{"redirectAllDNS": "true", "noDNS": "true"}, []string{"conflicting DNS modes", "redirectAllDNS", "noDNS"}},
		{"bad port range", map[string]string{"excludeOutboundPorts": "90-80"}, []string{"excludeOutboundPorts", `"90-80"`}},
		{"uid exclusion shape", map[string]string{"excludeOutboundPortsForUids": "tcp:80"}, []string{"excludeOutboundPortsForUids", "proto:ports:uids"}},
		{"uid exclusion proto", map[string]string{"excludeOutboundPortsForUids": "sctp:80:1000"}, []string{"excludeOutboundPortsForUids", `protocol "sctp"`}},
		{"uid exclusion user", map[string]string{"excludeOutboundPortsForUids": "tcp:80:ghost"}, []string{"excludeOutboundPortsForUids", `unknown user "ghost"`}},
		{"interface", map[string]string{"excludeInterfaces": "eth0,a/b"}, []string{"excludeInterfaces", `"a/b"`}},
		{"engine", map[string]string{"engine": "pf"}, []string{"engine", `"pf"`}},
		{"backend", map[string]string{"iptablesBackend": "xt"}, []string{"iptablesBackend", `"xt"`}},
		{"family", map[string]string{"ipFamily": "ipv6"}, []string{"ipFamily", `"ipv6"`}},
		{"missing resolv.conf", map[string]string{"resolvConf": "/nope"}, []string{"resolvConf", `"/nope"`, "does not exist"}},
		{"bypass mark", map[string]string{"bypassMark": "-1"}, []string{"bypassMark", `"-1"`}},
		{"interfaces with ebpf", map[string]string{"engine": "ebpf", "excludeInterfaces": "eth1"}, []string{"excludeInterfaces", "ebpf"}},
		{"excluding the inbound port", map[string]string{"excludeInboundPorts": "15000-15010"}, []string{"excludeInboundPorts", "15006"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := NewConfig()
			for k, v := range c.set {
				if err := cfg.Set(k, v, "test"); err != nil {
					t.Fatal(err)
				}
			}
			_, err := cfg.Plan(testHost())
			if err == nil {
				t.Fatal("Plan accepted an invalid configuration")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestNamesResolveAndListsParse(t *testing.T) {
	cfg := NewConfig()
	for k, v := range map[string]string{
		"proxyUID":                    "envoy",
		"proxyGID":                    "envoy",
		"excludeOutboundPortsForUids": "tcp:22,8000-8010:1000-1002;udp:*:envoy",
		"excludeOutboundCidrs":        "10.0.0.1, 192.168.0.0/16,::ffff:10.1.1.1/128",
		"resolvConf":                  "/etc/resolv.conf",
	} {
		if err := cfg.Set(k, v, "test"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := cfg.Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	if p.ProxyUID != 101 || p.ProxyGID == nil || *p.ProxyGID != 102 {
		t.Errorf("uid/gid = %d %v", p.ProxyUID, p.ProxyGID)
	}
	if len(p.ExcludeOutboundPortsForUIDs) != 2 || p.ExcludeOutboundPortsForUIDs[1].UIDs[0] != (IDRange{101, 101}) ||
		p.ExcludeOutboundPortsForUIDs[0].String() != "tcp:22,8000-8010:1000-1002" {
		t.Errorf("uid exclusions = %v", p.ExcludeOutboundPortsForUIDs)
	}
	wantCIDRs := []string{"10.0.0.1/32", "192.168.0.0/16", "10.1.1.1/32"}
	for i, w := range wantCIDRs {
		if p.ExcludeOutboundCIDRs[i].String() != w {
			t.Errorf("cidr %d = %s, want %s", i, p.ExcludeOutboundCIDRs[i], w)
		}
	}
}

func TestResolvConfOfNamedNetns(t *testing.T) {
	h := testHost()
	h.files["/etc/netns/pod1/resolv.conf"] = "nameserver 10.0.0.53\n"
	cfg := NewConfig()
	_ = cfg.Set("netns", "/run/netns/pod1", "test")
	p, err := cfg.Plan(h)
	if err != nil {
		t.Fatal(err)
	}
	if p.ResolvConf != "/etc/netns/pod1/resolv.conf" || p.DNSServers[0] != netip.MustParseAddr("10.0.0.53") {
		t.Errorf("resolv.conf = %s, servers %v", p.ResolvConf, p.DNSServers)
	}
	// An explicit resolvConf wins.
	_ = cfg.Set("resolvConf", "/etc/resolv.conf", "flag")
	if p, _ = cfg.Plan(h); p.ResolvConf != "/etc/resolv.conf" {
		t.Errorf("explicit resolvConf ignored: %s", p.ResolvConf)
	}
}

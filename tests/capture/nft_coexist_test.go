package capture_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// kubeProxyRuleset is what kube-proxy's nftables proxier writes for one
// ClusterIP service (default/backend, port 80, one endpoint) in family
// ("ip" or "ip6"): its table of its own, the services chain dispatching
// through the service-ips verdict map, a service chain that marks
// traffic from outside the cluster CIDR for masquerading and picks an
// endpoint with numgen, an endpoint chain that DNATs, the masquerading
// chain in nat postrouting, and the filter chains that reject ClusterIP
// traffic to ports no service has. Hooks and priorities are kube-proxy's:
// filter at dstnat-10 (pre-DNAT) and 0, nat at dstnat and srcnat.
func kubeProxyRuleset(family, clusterIP, clusterRange, clusterCIDR, endpoint string, endpointPort int) string {
	addr, saddr, daddr := "ipv4_addr", "ip saddr", "ip daddr"
	if family == "ip6" {
		addr, saddr, daddr = "ipv6_addr", "ip6 saddr", "ip6 daddr"
	}
	ep := endpoint
	if family == "ip6" {
		ep = "[" + endpoint + "]"
	}
	svc := "service-2SRQFCS4-default/backend/tcp/http"
	// nft names cannot hold a colon: an IPv6 endpoint's is written with dots.
	epChain := fmt.Sprintf("endpoint-7MSNWOXQ-default/backend/tcp/http__%s/%d", strings.ReplaceAll(endpoint, ":", "."), endpointPort)
	return fmt.Sprintf(`add table %[1]s kube-proxy { comment "rules for kube-proxy" ; }
add set %[1]s kube-proxy cluster-ips { type %[2]s ; comment "Active ClusterIPs" ; }
add set %[1]s kube-proxy nodeport-ips { type %[2]s ; comment "IPs that accept NodePort traffic" ; }
add map %[1]s kube-proxy service-ips { type %[2]s . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map %[1]s kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add map %[1]s kube-proxy no-endpoint-services { type %[2]s . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map %[1]s kube-proxy firewall-ips { type %[2]s . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add chain %[1]s kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain %[1]s kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain %[1]s kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain %[1]s kube-proxy filter-input { type filter hook input priority 0 ; }
add chain %[1]s kube-proxy filter-output { type filter hook output priority 0 ; }
add chain %[1]s kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain %[1]s kube-proxy nat-output { type nat hook output priority -100 ; }
add chain %[1]s kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain %[1]s kube-proxy cluster-ips-check
add chain %[1]s kube-proxy firewall-check
add chain %[1]s kube-proxy mark-for-masquerade
add chain %[1]s kube-proxy masquerading
add chain %[1]s kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain %[1]s kube-proxy services
add chain %[1]s kube-proxy service-endpoints-check
add rule %[1]s kube-proxy cluster-ips-check %[4]s @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule %[1]s kube-proxy cluster-ips-check %[4]s { %[6]s } drop comment "Drop traffic to unallocated ClusterIPs"
add rule %[1]s kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule %[1]s kube-proxy filter-forward ct state new jump service-endpoints-check
add rule %[1]s kube-proxy filter-forward ct state new jump cluster-ips-check
add rule %[1]s kube-proxy filter-input ct state new jump service-endpoints-check
add rule %[1]s kube-proxy filter-output ct state new jump service-endpoints-check
add rule %[1]s kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule %[1]s kube-proxy filter-output ct state new jump cluster-ips-check
add rule %[1]s kube-proxy firewall-check %[4]s . meta l4proto . th dport vmap @firewall-ips
add rule %[1]s kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule %[1]s kube-proxy masquerading mark and 0x4000 == 0 return
add rule %[1]s kube-proxy masquerading mark set mark xor 0x4000
add rule %[1]s kube-proxy masquerading masquerade fully-random
add rule %[1]s kube-proxy nat-output jump services
add rule %[1]s kube-proxy nat-postrouting jump masquerading
add rule %[1]s kube-proxy nat-prerouting jump services
add rule %[1]s kube-proxy reject-chain reject
add rule %[1]s kube-proxy services %[4]s . meta l4proto . th dport vmap @service-ips
add rule %[1]s kube-proxy services %[4]s @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule %[1]s kube-proxy service-endpoints-check %[4]s . meta l4proto . th dport vmap @no-endpoint-services
add chain %[1]s kube-proxy %[7]s
add chain %[1]s kube-proxy %[9]s
add rule %[1]s kube-proxy %[7]s %[4]s %[5]s %[3]s != %[8]s jump mark-for-masquerade
add rule %[1]s kube-proxy %[7]s numgen random mod 1 vmap { 0 : goto %[9]s }
add rule %[1]s kube-proxy %[9]s %[3]s %[10]s jump mark-for-masquerade
add rule %[1]s kube-proxy %[9]s meta l4proto tcp dnat to %[11]s:%[12]d
add element %[1]s kube-proxy cluster-ips { %[5]s }
add element %[1]s kube-proxy service-ips { %[5]s . tcp . 80 : goto %[7]s }
`, family, addr, saddr, daddr, clusterIP, clusterRange, svc, clusterCIDR, epChain, endpoint, ep, endpointPort)
}

// kubeProxyAddsService is what kube-proxy's next sync sends when a second
// service (default/other, port 8000, no endpoint) appears: new chains and
// map elements only, as its partial syncs do.
func kubeProxyAddsService(family, clusterIP string) string {
	return fmt.Sprintf(`add element %[1]s kube-proxy cluster-ips { %[2]s }
add element %[1]s kube-proxy no-endpoint-services { %[2]s . tcp . 8000 comment "default/other:http" : goto reject-chain }
`, family, clusterIP)
}

// kubeProxyWorld is a world whose pod also runs kube-proxy's nftables
// rules for one ClusterIP service (10.96.0.10 and fd00:96::10, port 80)
// whose endpoint is a backend namespace of its own (10.3.0.2 and
// fd00:3::2, port 8080), reached on a second link.
//
// The pod routes the service range through the remote (link 1), so the
// source it picks for a ClusterIP is its link-1 address; the backend knows
// only its own link. It can answer only if kube-proxy masquerades the
// connection to the pod's link-3 address, and says whom it saw.
type kubeProxyWorld struct {
	*world
	backend *testenv.Netns
	rules   string // nft -f file of both families' tables
}

func newKubeProxyWorld(t *testing.T) *kubeProxyWorld {
	t.Helper()
	w := newWorld(t, nativeNftables)
	k := &kubeProxyWorld{world: w, backend: testenv.NewNetns(t, "kpbe")}
	testenv.Link(t, w.pod, k.backend, 3)
	w.pod.MustRun("ip", "route", "add", "10.96.0.0/16", "via", w.remoteIf.IPv4.String(), "dev", w.podIf.Dev)
	w.pod.MustRun("ip", "-6", "route", "add", "fd00:96::/108", "via", w.remoteIf.IPv6.String(), "dev", w.podIf.Dev)
	for _, addr := range []string{"10.3.0.2:8080", "[fd00:3::2]:8080"} {
		testenv.ServeTCP(t, k.backend, addr, func(c *net.TCPConn) {
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			testenv.ReplyHTTP(c, "backend, client "+host)
		})
	}
	k.rules = filepath.Join(t.TempDir(), "kube-proxy.nft")
	rules := kubeProxyRuleset("ip", "10.96.0.10", "10.96.0.0/16", "10.244.0.0/16", "10.3.0.2", 8080) +
		kubeProxyRuleset("ip6", "fd00:96::10", "fd00:96::/108", "fd00:10:244::/56", "fd00:3::2", 8080)
	if err := os.WriteFile(k.rules, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	k.load()
	return k
}

// load (re)creates kube-proxy's tables, as kube-proxy does when it starts
// after its tables were removed (its cleanup, a reboot).
func (k *kubeProxyWorld) load() {
	k.t.Helper()
	for _, fam := range []string{"ip", "ip6"} {
		_, _ = k.pod.Run("nft", "delete", "table", fam, "kube-proxy")
	}
	k.pod.MustRun("nft", "-f", k.rules)
}

// tables is nft's JSON listing of kube-proxy's two tables, byte for byte.
func (k *kubeProxyWorld) tables() string {
	k.t.Helper()
	return k.pod.MustRun("nft", "-j", "list", "table", "ip", "kube-proxy") + k.pod.MustRun("nft", "-j", "list", "table", "ip6", "kube-proxy")
}

// checkService asserts that the application's connections to the
// ClusterIP, IPv4 and IPv6, pass through the proxy stand-ins (which see
// the ClusterIP: capture ran before kube-proxy's DNAT) and then reach the
// backend masqueraded (kube-proxy's DNAT and masquerade acted on the
// proxy's connection); and that the proxy's own connections go straight
// to kube-proxy, which still rejects a ClusterIP port no service has.
func (k *kubeProxyWorld) checkService(when string) {
	k.t.Helper()
	if !k.fetch(appUID, "http://10.96.0.10/", "backend, client 10.3.0.1", "10.96.0.10:80") {
		k.t.Errorf("%s: the application's connection to the ClusterIP did not pass through the proxy", when)
	}
	if !k.fetch(appUID, "http://[fd00:96::10]/", "backend, client fd00:3::1", "[fd00:96::10]:80") {
		k.t.Errorf("%s: the application's connection to the IPv6 ClusterIP did not pass through the proxy", when)
	}
	if k.fetch(proxyUID, "http://10.96.0.10/", "backend, client 10.3.0.1", "10.96.0.10:80") {
		k.t.Errorf("%s: the proxy's own connection to the ClusterIP was captured", when)
	}
	if got, err := k.curl(proxyUID, "http://10.96.0.10:81/"); !refused(got, err) {
		k.t.Errorf("%s: kube-proxy no longer rejects a ClusterIP port without a service: %q, %v", when, got, err)
	}
}

// TestNftablesCoexistsWithKubeProxy installs shunt's nftables capture in a
// namespace that holds kube-proxy's nftables-mode tables: the application's
// connection to a ClusterIP goes through the proxy and on to the backend
// through kube-proxy's DNAT and masquerade; kube-proxy's tables are left
// byte for byte as they were by install and uninstall; kube-proxy's own
// changes are not drift; and kube-proxy re-creating its tables after
// shunt's install (kube-proxy started after shunt) does not take the
// application's connections away from the proxy.
func TestNftablesCoexistsWithKubeProxy(t *testing.T) {
	k := newKubeProxyWorld(t)
	if got, err := k.curl(appUID, "http://10.96.0.10/"); err != nil || got != "backend, client 10.3.0.1" {
		t.Fatalf("kube-proxy's rules alone: GET ClusterIP = %q, %v; want the backend, masqueraded", got, err)
	}
	k.startProxies()
	before := k.tables()
	k.install()
	if after := k.tables(); after != before {
		t.Errorf("install changed kube-proxy's tables:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	k.checkService("after install")

	// kube-proxy syncs a new service: its tables change, shunt's do not.
	file := filepath.Join(t.TempDir(), "sync.nft")
	if err := os.WriteFile(file, []byte(kubeProxyAddsService("ip", "10.96.0.11")+kubeProxyAddsService("ip6", "fd00:96::11")), 0o644); err != nil {
		t.Fatal(err)
	}
	k.pod.MustRun("nft", "-f", file)
	if out, err := k.shunt("status"); exitCode(err) != 0 || strings.Contains(out, "drift") {
		t.Errorf("status after kube-proxy's sync: exit %d, want 0 without drift\n%s", exitCode(err), out)
	}
	if got, err := k.curl(proxyUID, "http://10.96.0.11:8000/"); !refused(got, err) {
		t.Errorf("kube-proxy's new service without endpoints is not rejected: %q, %v", got, err)
	}

	// kube-proxy starts again after shunt and re-creates its tables.
	k.load()
	if out, err := k.shunt("status"); exitCode(err) != 0 || strings.Contains(out, "drift") {
		t.Errorf("status after kube-proxy re-created its tables: exit %d, want 0 without drift\n%s", exitCode(err), out)
	}
	k.checkService("after kube-proxy re-created its tables")

	before = k.tables()
	if out, err := k.shunt("uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if after := k.tables(); after != before {
		t.Errorf("uninstall changed kube-proxy's tables:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got, err := k.curl(appUID, "http://10.96.0.10/"); err != nil || got != "backend, client 10.3.0.1" {
		t.Errorf("after uninstall: GET ClusterIP = %q, %v; want the backend through kube-proxy alone", got, err)
	}
}

// dockerRules is what dockerd writes through iptables-nft for its default
// bridge docker0 (172.17.0.0/16) with one container (172.17.0.2) whose
// port 80 is published on the host's port 8088: the DOCKER chains in nat
// and filter, MASQUERADE of the bridge's traffic in nat POSTROUTING, and
// DOCKER-USER and the DOCKER-ISOLATION stages in filter FORWARD, whose
// policy is DROP.
// dockerRules is Docker's iptables-nft ruleset before Docker 28 for the
// default bridge with one container publishing port 80 as 8088, plus a
// DOCKER-USER reject of port 8099.
const dockerRules = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8088 -j DNAT --to-destination 172.17.0.2:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -p tcp -m tcp --dport 8099 -j REJECT --reject-with tcp-reset
-A DOCKER-USER -j RETURN
COMMIT
`

// docker28Rules is the same host as Docker 28 lays it out with iptables:
// FORWARD jumps to DOCKER-USER then DOCKER-FORWARD, which dispatches to
// DOCKER-CT (established traffic to a bridge), DOCKER-INTERNAL, and
// DOCKER-BRIDGE (to DOCKER, whose last rule drops what is routed to the
// bridge unpublished, whatever FORWARD's policy); the raw table drops
// traffic addressed to the container from outside its bridge.
const docker28Rules = `*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8088 -j DNAT --to-destination 172.17.0.2:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-INTERNAL - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER ! -i docker0 -o docker0 -j DROP
-A DOCKER-BRIDGE -o docker0 -j DOCKER
-A DOCKER-CT -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-INTERNAL
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i docker0 -j ACCEPT
-A DOCKER-USER -p tcp -m tcp --dport 8099 -j REJECT --reject-with tcp-reset
COMMIT
`

// dockerNftRules is the same host as Docker's nftables firewall backend
// lays it out, in a table of its own: its nat chains hook at dstnat (-100)
// and srcnat (100) like iptables-nft's, its forward chain dispatches through
// verdict maps keyed by the bridge, and its raw chain drops direct access
// to the container. That backend has no DOCKER-USER: a user's own rules
// live in a table of their own, here a reject of port 8099 in forward.
const dockerNftRules = `table ip docker-bridges {
	map filter-forward-in-jumps {
		type ifname : verdict
		elements = { "docker0" : jump filter-forward-in__docker0 }
	}
	map filter-forward-out-jumps {
		type ifname : verdict
		elements = { "docker0" : jump filter-forward-out__docker0 }
	}
	map nat-postrouting-out-jumps {
		type ifname : verdict
		elements = { "docker0" : jump nat-postrouting-out__docker0 }
	}
	chain filter-FORWARD {
		type filter hook forward priority 0; policy accept;
		oifname vmap @filter-forward-in-jumps
		iifname vmap @filter-forward-out-jumps
	}
	chain nat-OUTPUT {
		type nat hook output priority -100; policy accept;
		ip daddr != 127.0.0.0/8 fib daddr type local jump nat-prerouting-and-output
	}
	chain nat-POSTROUTING {
		type nat hook postrouting priority 100; policy accept;
		iifname vmap @nat-postrouting-out-jumps
	}
	chain nat-PREROUTING {
		type nat hook prerouting priority -100; policy accept;
		fib daddr type local jump nat-prerouting-and-output
	}
	chain nat-prerouting-and-output {
		iifname != "docker0" tcp dport 8088 dnat to 172.17.0.2:80
	}
	chain raw-PREROUTING {
		type filter hook prerouting priority -300; policy accept;
		ip daddr 172.17.0.2 iifname != "docker0" drop
	}
	chain filter-forward-in__docker0 {
		ct state established,related accept
		iifname "docker0" accept
		ip daddr 172.17.0.2 tcp dport 80 accept
		drop
	}
	chain filter-forward-out__docker0 {
		ct state established,related accept
		accept
	}
	chain nat-postrouting-out__docker0 {
		oifname != "docker0" ip saddr 172.17.0.0/16 masquerade
	}
}
table inet user-forward {
	chain forward {
		type filter hook forward priority -1; policy accept;
		tcp dport 8099 reject with tcp reset
	}
}
`

// TestNftablesCoexistsWithDocker installs shunt's nftables capture on a
// Docker host: a namespace with a docker0 bridge, a container behind it and
// Docker's rules, as Docker before 28 and Docker 28 write them with
// iptables-nft and as its nftables backend writes them. With the bridge
// excluded (its traffic is the containers', not the workload's),
// forwarding keeps working: the container reaches the remote
// masqueraded, the remote reaches the published port through Docker's
// DNAT, the user's reject still acts, while the host's application is
// captured. Docker's rules are the same after install and after uninstall.
func TestNftablesCoexistsWithDocker(t *testing.T) {
	nft := testenv.RequireBinary(t, "nft")
	restore := testenv.RequireBinary(t, "iptables-nft-restore")
	for _, layout := range []struct {
		name, rules string
		// nft: the rules are nft -f input, else iptables-nft-restore's.
		nft bool
	}{
		{name: "iptables before 28", rules: dockerRules},
		{name: "iptables 28", rules: docker28Rules},
		{name: "nftables backend", rules: dockerNftRules, nft: true},
	} {
		t.Run(layout.name, func(t *testing.T) {
			w := newWorld(t, nativeNftables)
			ctr := testenv.NewNetns(t, "ctr")
			w.pod.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1")
			w.pod.MustRun("ip", "link", "add", "docker0", "type", "bridge")
			w.pod.MustRun("ip", "addr", "add", "172.17.0.1/16", "dev", "docker0")
			w.pod.MustRun("ip", "link", "set", "docker0", "up")
			host, peer := testenv.UniqueName("vd"), testenv.UniqueName("ve")
			w.pod.MustRun("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ctr.Name())
			w.pod.MustRun("ip", "link", "set", host, "master", "docker0", "up")
			ctr.MustRun("ip", "link", "set", peer, "name", "eth0")
			ctr.MustRun("ip", "addr", "add", "172.17.0.2/16", "dev", "eth0")
			ctr.MustRun("ip", "link", "set", "eth0", "up")
			ctr.MustRun("ip", "route", "add", "default", "via", "172.17.0.1")
			testenv.ServeHTTP(t, ctr, "0.0.0.0:80", "container:80")
			// The remote says whom it saw: the container only as the
			// host's address (it has no route to 172.17.0.0/16), that
			// is masqueraded.
			for _, port := range []string{"8090", "8099"} {
				testenv.ServeTCP(t, w.remote, "0.0.0.0:"+port, func(c *net.TCPConn) {
					h, _, _ := net.SplitHostPort(c.RemoteAddr().String())
					testenv.ReplyHTTP(c, "remote, client "+h)
				})
			}
			w.serveHTTP(8080)
			rules := filepath.Join(t.TempDir(), "docker.rules")
			if err := os.WriteFile(rules, []byte(layout.rules), 0o644); err != nil {
				t.Fatal(err)
			}
			dockerSave := func() string {
				return normalizeSave(w.pod.MustRun("iptables-nft-save"))
			}
			if layout.nft {
				w.pod.MustRun(nft, "-f", rules)
				dockerSave = func() string {
					return w.pod.MustRun(nft, "-j", "list", "table", "ip", "docker-bridges") + w.pod.MustRun(nft, "-j", "list", "table", "inet", "user-forward")
				}
			} else {
				w.pod.MustRun(restore, rules)
			}
			fromContainer := func(url string) (string, error) {
				return ctr.Run("curl", "-sS", "--max-time", "4", url)
			}
			fromRemote := func(url string) (string, error) {
				return w.remote.Run("curl", "-sS", "--max-time", "4", url)
			}
			check := func(when string) {
				t.Helper()
				if got, err := fromContainer("http://10.1.0.2:8090/"); err != nil || got != "remote, client 10.1.0.1" {
					t.Errorf("%s: container → remote through the bridge = %q, %v; want it masqueraded to 10.1.0.1", when, got, err)
				}
				if got, err := fromRemote("http://10.1.0.1:8088/"); err != nil || got != "container:80" {
					t.Errorf("%s: remote → published port 8088 = %q, %v; want the container", when, got, err)
				}
				if got, err := fromContainer("http://10.1.0.2:8099/"); !refused(got, err) {
					t.Errorf("%s: the user's reject of port 8099 no longer acts: %q, %v", when, got, err)
				}
			}
			check("Docker's rules alone")
			before := dockerSave()

			w.startProxies()
			w.install("--exclude-interfaces", "docker0")
			if after := dockerSave(); after != before {
				t.Errorf("install changed Docker's rules:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			check("with shunt's capture")
			if !w.fetch(appUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
				t.Errorf("the host application's connection did not pass through the proxy beside Docker's rules")
			}
			if out, err := w.shunt("status"); exitCode(err) != 0 {
				t.Errorf("status beside Docker's rules: exit %d\n%s", exitCode(err), out)
			}
			if out, err := w.shunt("uninstall"); err != nil {
				t.Fatalf("uninstall: %v\n%s", err, out)
			}
			if after := dockerSave(); after != before {
				t.Errorf("uninstall changed Docker's rules:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			check("after uninstall")
		})
	}
}

// TestNftablesInstallMovesATableToTheCurrentPriorities: a table and record
// an earlier build wrote with its nat chains at dstnat (-100) are as
// recorded, yet the same plan installed again writes the table with this
// build's priorities, without which kube-proxy's or Docker's nat chains
// could run first.
func TestNftablesInstallMovesATableToTheCurrentPriorities(t *testing.T) {
	w := newWorld(t, nativeNftables)
	w.install()
	// Over the installed table the dry run replaces it whole.
	dry, err := w.shunt("install", "--dry-run")
	if err != nil {
		t.Fatalf("install --dry-run: %v\n%s", err, dry)
	}
	// The earlier build's table: the same, with nat at -100.
	old := strings.NewReplacer("priority -101;", "priority -100;", "priority -99;", "priority -100;").Replace(dry)
	if old == dry {
		t.Fatalf("the dry run has no nat chain at -101 or -99:\n%s", dry)
	}
	file := filepath.Join(t.TempDir(), "old.nft")
	if err := os.WriteFile(file, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	w.pod.MustRun("nft", "-f", file)
	rec := filepath.Join(w.stateDir, "capture.json")
	b, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	oldRec := strings.NewReplacer("priority -101 ", "priority -100 ", "priority -99 ", "priority -100 ").Replace(string(b))
	if err := os.WriteFile(rec, []byte(oldRec), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := w.shunt("status"); exitCode(err) != 0 {
		t.Fatalf("status of the earlier build's table and record: exit %d, want 0\n%s", exitCode(err), out)
	}
	w.install()
	list := w.pod.MustRun("nft", "list", "table", "inet", "shunt")
	// nft names -99 "dstnat + 1" but prints -101 as a number.
	for _, want := range []string{"type nat hook output priority -101;", "type nat hook prerouting priority dstnat + 1;"} {
		if !strings.Contains(list, want) {
			t.Errorf("install left the earlier priorities: no %q in\n%s", want, list)
		}
	}
}

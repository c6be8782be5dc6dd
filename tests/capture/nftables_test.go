package capture_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/nftables"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// normalizeNft strips the counters nft lists, which change with traffic.
func normalizeNft(s string) string {
	return regexp.MustCompile(`packets \d+ bytes \d+`).ReplaceAllString(s, "packets N bytes N")
}

// TestNftablesCoexistsWithOtherTables installs shunt's table beside an
// iptables-nft ruleset and a firewalld-like inet filter table, and proves
// all three still do their job: each foreign rule still acts on the
// proxy's uncaptured connections, iptables-nft's nat too, while shunt
// captures the application's. Uninstall leaves exactly the other two.
func TestNftablesCoexistsWithOtherTables(t *testing.T) {
	w := newWorld(t, nativeNftables)
	testenv.RequireBinary(t, "iptables-nft")
	w.serveHTTP(8080, 8083, 8084, 8085)
	w.pod.MustRun("iptables-nft", "-t", "filter", "-A", "OUTPUT", "-p", "tcp", "--dport", "8083", "-m", "owner", "--uid-owner", fmt.Sprint(proxyUID), "-j", "REJECT", "--reject-with", "tcp-reset")
	w.pod.MustRun("iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.1.0.2", "--dport", "8085", "-m", "owner", "--uid-owner", fmt.Sprint(proxyUID), "-j", "DNAT", "--to-destination", "10.1.0.2:8080")
	firewalld := filepath.Join(t.TempDir(), "filter.nft")
	if err := os.WriteFile(firewalld, []byte(`table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		ct state established,related accept
	}
	chain output {
		type filter hook output priority filter; policy accept;
		meta skuid `+fmt.Sprint(proxyUID)+` tcp dport 8084 reject with tcp reset
	}
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	w.pod.MustRun("nft", "-f", firewalld)
	before := normalizeNft(w.save(false))
	w.startProxies()
	w.install()

	if !w.fetch(appUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
		t.Errorf("the application's connection did not pass through the proxy")
	}
	if w.fetch(proxyUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
		t.Errorf("the proxy's own connection was captured")
	}
	if got, err := w.curl(proxyUID, "http://10.1.0.2:8085/"); err != nil || got != "remote:8080" {
		t.Errorf("iptables-nft's DNAT beside shunt's nat: GET :8085 = %q, %v; want remote:8080", got, err)
	}
	for port, owner := range map[int]string{8083: "iptables-nft", 8084: "inet filter"} {
		if got, err := w.curl(proxyUID, fmt.Sprintf("http://10.1.0.2:%d/", port)); !refused(got, err) {
			t.Errorf("%s's reject of port %d no longer works: %q, %v", owner, port, got, err)
		}
	}
	if out, err := w.shunt("uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if after := normalizeNft(w.save(false)); after != before {
		t.Errorf("uninstall did not leave the other tables exactly as they were:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestNftablesLockdown locks egress down with the nftables engine: what is
// not allowed is refused at once, for the proxy too; allowed ranges and
// the proxy's endpoints (address and TCP port) stay reachable.
func TestNftablesLockdown(t *testing.T) {
	w := newWorld(t, nativeNftables)
	w.serveHTTP(8080, 8081)
	w.startProxies()
	cfg := redirect.NewConfig()
	for k, v := range map[string]string{"netns": w.pod.Path(), "resolvConf": filepath.Join("/etc/netns", w.pod.Name(), "resolv.conf"), "meshCidrs": "10.1.0.3/32"} {
		if err := cfg.Set(k, v, "test"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := cfg.Plan(redirect.OSHost{})
	if err != nil {
		t.Fatal(err)
	}
	p.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("fd00:1::3/128")},
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.1.0.2:8081"), netip.MustParseAddrPort("[fd00:1::2]:8081")}}
	eng := nftables.New(nftables.Options{NetnsPath: w.pod.Path(), StateDir: w.stateDir})
	if err := eng.Install(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Uninstall(context.Background()) })

	cases := []struct {
		url, body string
		ok        bool
	}{
		{"http://10.1.0.2:8081/", "remote:8081", true},    // endpoint
		{"http://[fd00:1::2]:8081/", "remote:8081", true}, // endpoint
		{"http://10.1.0.3:8080/", "remote:8080", true},    // mesh CIDR
		{"http://[fd00:1::3]:8080/", "remote:8080", true}, // allowed
		{"http://10.1.0.2:8080/", "", false},              // endpoint's host, other port
		{"http://[fd00:1::2]:8080/", "", false},           // same, IPv6
	}
	for _, c := range cases {
		got, err := w.curl(proxyUID, c.url)
		if c.ok && (err != nil || got != c.body) {
			t.Errorf("proxy GET %s = %q, %v; want %q", c.url, got, err, c.body)
		}
		if !c.ok && !refused(got, err) {
			t.Errorf("proxy GET %s = %q, %v; want refused at once (TCP reset)", c.url, got, err)
		}
	}
	// The application's connections are captured to the proxy, which
	// lockdown lets through.
	if !w.fetch(appUID, "http://10.1.0.3:8080/", "remote:8080", "10.1.0.3:8080") {
		t.Errorf("the application's connection did not pass through the proxy under lockdown")
	}
}

// TestNftablesStatusDriftAndExplain drives status, explain and drift repair
// through the CLI, on a PATH without programs.
func TestNftablesStatusDriftAndExplain(t *testing.T) {
	w := newWorld(t, nativeNftables)
	if _, err := w.shunt("status"); exitCode(err) != 4 {
		t.Fatalf("status before install: exit %d, want 4", exitCode(err))
	}
	w.install()
	out, err := w.shunt("status")
	if exitCode(err) != 0 || !strings.Contains(out, "engine:  nftables") || !strings.Contains(out, "meta l4proto tcp redirect to :15001") {
		t.Fatalf("status after install: exit %d\n%s", exitCode(err), out)
	}
	w.pod.MustRun("nft", "flush", "chain", "inet", "shunt", "output4")
	out, err = w.shunt("status")
	if exitCode(err) != 3 || !strings.Contains(out, "missing: rule output4: meta l4proto tcp redirect to :15001") {
		t.Errorf("status after nft flush chain: exit %d, want 3 naming the rule\n%s", exitCode(err), out)
	}
	out, _ = w.shunt("explain", "--dst", "10.1.0.2:8080")
	if !strings.Contains(out, "WARNING") || !strings.Contains(out, "redirected to port 15001") {
		t.Errorf("explain with drift:\n%s", out)
	}
	w.install() // restores
	if out, err := w.shunt("status"); exitCode(err) != 0 {
		t.Errorf("status after restoring: exit %d\n%s", exitCode(err), out)
	}
	out, err = w.shunt("install", "--dry-run")
	if err != nil || !strings.Contains(out, "table inet shunt {") || !strings.Contains(out, "delete table inet shunt") {
		t.Errorf("install --dry-run: %v\n%s", err, out)
	}
	out, err = w.shunt("install", "--dry-run", "--inbound-mode", "tproxy", "--drop-invalid", "--packet-log", "nflog:3", "--include-outbound-ports", "443", "--vnet-interfaces", "tap0")
	for _, want := range []string{"tproxy ip to :15006 meta mark set 0x00000539 accept", "ct state invalid log prefix \"shunt-drop-invalid\" group 3 drop", "set include_outbound_ports {", "chain vnet4 {"} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("install --dry-run with every option lacks %q: %v\n%s", want, err, out)
		}
	}
	out, err = w.shunt("uninstall", "--dry-run")
	if err != nil || !strings.Contains(out, "delete table inet shunt") {
		t.Errorf("uninstall --dry-run: %v\n%s", err, out)
	}
}

// TestEngineChangeMigratesTheCapture installs with iptables, then with
// nftables, then back: each install takes the capture over and leaves
// nothing of the previous engine.
func TestEngineChangeMigratesTheCapture(t *testing.T) {
	w := newWorld(t, "nft")
	testenv.RequireBinary(t, "nft")
	w.install()
	run := func(args ...string) string {
		t.Helper()
		full := append([]string{args[0], "--netns", w.pod.Path(), "--state-dir", w.stateDir}, args[1:]...)
		out, err := exec.Command(bins.shunt, full...).CombinedOutput()
		if err != nil {
			t.Fatalf("shunt %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("install", "--engine", "nftables")
	if save := w.pod.MustRun("iptables-nft-save"); strings.Contains(save, "SHUNT_") {
		t.Errorf("iptables rules survived the change to nftables:\n%s", save)
	}
	if out := run("status"); !strings.Contains(out, "engine:  nftables") {
		t.Errorf("status after migrating to nftables:\n%s", out)
	}
	run("install", "--engine", "iptables", "--iptables-backend", "nft")
	if out, _ := w.pod.Run("nft", "list", "table", "inet", "shunt"); strings.Contains(out, "chain") {
		t.Errorf("the nftables table survived the change to iptables:\n%s", out)
	}
	if out := run("status"); !strings.Contains(out, "engine:  iptables") {
		t.Errorf("status after migrating back:\n%s", out)
	}
}

// TestAutoChoosesNftablesWithoutIptables runs engine auto where no iptables
// program exists and no cgroup is given: nftables, and status says why.
func TestAutoChoosesNftablesWithoutIptables(t *testing.T) {
	w := newWorld(t, nativeNftables)
	cmd := exec.Command(bins.shunt, "install", "--engine", "auto", "--netns", w.pod.Path(), "--state-dir", w.stateDir)
	cmd.Env = withoutPrograms(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install --engine auto: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = w.shunt("uninstall") })
	out, err := w.shunt("status")
	if err != nil || !strings.Contains(out, "engine:  nftables") || !strings.Contains(out, "no iptables programs in PATH") {
		t.Errorf("status after auto: %v\n%s", err, out)
	}
}

// TestNftablesRacingInstalls starts installs from separate processes with
// separate state directories: the namespace lock serialises them and one
// whole table results.
func TestNftablesRacingInstalls(t *testing.T) {
	w := newWorld(t, nativeNftables)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	outs := make([]string, 6)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cmd := exec.Command(bins.shunt, "install", "--engine", "nftables", "--netns", w.pod.Path(), "--state-dir", filepath.Join(w.stateDir, fmt.Sprint(i)),
				"--outbound-port", fmt.Sprint(15001+i%2*1000))
			cmd.Env = withoutPrograms(t)
			b, err := cmd.CombinedOutput()
			errs[i], outs[i] = err, string(b)
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("install %d: %v\n%s", i, err, outs[i])
		}
	}
	t.Cleanup(func() { w.pod.MustRun("nft", "delete", "table", "inet", "shunt") })
	list := w.pod.MustRun("nft", "list", "ruleset")
	if n := strings.Count(list, "table inet shunt"); n != 1 {
		t.Errorf("%d shunt tables, want 1:\n%s", n, list)
	}
	if n := strings.Count(list, "redirect to :15001") + strings.Count(list, "redirect to :16001"); n != 2 {
		t.Errorf("%d outbound redirects, want one per family:\n%s", n, list)
	}
}

// refused reports a connection curl could not open because it was refused
// (a TCP reset answered the SYN), not one that timed out.
func refused(out string, err error) bool {
	return exitCode(err) == 7 && strings.Contains(out, "Couldn't connect") && !strings.Contains(out, "Timeout")
}

// TestNftablesLockdownWithIncludeList: under lockdown, TCP that the
// include-only list leaves uncaptured goes straight to an allowed
// destination, and the gap guard (the NAT gone) resets only what capture
// would have redirected.
func TestNftablesLockdownWithIncludeList(t *testing.T) {
	w := newWorld(t, nativeNftables)
	w.serveHTTP(8080, 8081)
	w.startProxies()
	cfg := redirect.NewConfig()
	for k, v := range map[string]string{"netns": w.pod.Path(), "resolvConf": filepath.Join("/etc/netns", w.pod.Name(), "resolv.conf"), "meshCidrs": "10.1.0.3/32", "includeOutboundPorts": "8080"} {
		if err := cfg.Set(k, v, "test"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := cfg.Plan(redirect.OSHost{})
	if err != nil {
		t.Fatal(err)
	}
	p.Egress = &redirect.Egress{}
	eng := nftables.New(nftables.Options{NetnsPath: w.pod.Path(), StateDir: w.stateDir})
	if err := eng.Install(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Uninstall(context.Background()) })
	if !w.fetch(appUID, "http://10.1.0.3:8080/", "remote:8080", "10.1.0.3:8080") {
		t.Errorf("an included port was not captured")
	}
	if w.fetch(appUID, "http://10.1.0.3:8081/", "remote:8081", "10.1.0.3:8081") {
		t.Errorf("a port outside the include list was captured")
	}
	// The NAT rules gone: the included port is reset, the other still
	// reaches the allowed destination.
	w.pod.MustRun("nft", "flush", "chain", "inet", "shunt", "output4")
	if got, err := w.curl(appUID, "http://10.1.0.3:8080/"); !refused(got, err) {
		t.Errorf("without NAT, the included port: %q, %v; want a reset", got, err)
	}
	if got, err := w.curl(appUID, "http://10.1.0.3:8081/"); err != nil || got != "remote:8081" {
		t.Errorf("without NAT, the port outside the include list: %q, %v; want it to reach the allowed destination", got, err)
	}
}

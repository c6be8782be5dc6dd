package dns_test

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// pod is a network namespace laid out like a Kubernetes pod whose DNS is
// captured: bind9 plays the cluster resolver on 127.0.0.2:53, `shunt dns`
// listens on 127.0.0.1:53, and the pod's resolv.conf points at shunt with
// the usual search list and ndots:5. The original resolv.conf is what shunt
// reads for its upstreams and search domains.
type pod struct {
	ns    *testenv.Netns
	table string
	shunt *testenv.Process
}

const podSearch = "search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"

func startPod(t *testing.T, extraArgs ...string) *pod {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "getent")
	bin := shuntBinary(t)
	ns := testenv.NewNetns(t, "dns")
	ns.WriteResolvConf("nameserver 127.0.0.1\n" + podSearch)
	// A pod has a non-loopback interface of each family; without one glibc's
	// AI_ADDRCONFIG would drop AAAA answers.
	testenv.Link(t, testenv.NewNetns(t, "node"), ns, 53)
	// bind9 listens only on addresses an interface carries.
	ns.MustRun("ip", "addr", "add", "127.0.0.2/8", "dev", "lo")
	startNamed(t, ns, netipAP("127.0.0.2:53"))
	dir := t.TempDir()
	orig := filepath.Join(dir, "resolv.conf.orig")
	must(t, os.WriteFile(orig, []byte("nameserver 127.0.0.2\n"+podSearch), 0o644))
	p := &pod{ns: ns, table: filepath.Join(dir, "names.yaml")}
	must(t, os.WriteFile(p.table, []byte("httpbin.mesh: [240.0.0.1, \"fd00::1\"]\nhttpbin.org: [240.0.0.2]\n"), 0o644))
	args := append([]string{"dns", "--listen", "127.0.0.1:53", "--resolv-conf", orig, "--table", p.table, "--table-poll", "100ms"}, extraArgs...)
	p.shunt = ns.Start(ns.Command(context.Background(), bin, args...))
	waitAnswer(t, ns, netipAP("127.0.0.1:53"), "httpbin.mesh", "240.0.0.1", p.shunt)
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// getent resolves name with glibc inside the pod and returns the distinct
// addresses, or the exit error.
func (p *pod) getent(name string) (string, error) {
	out, err := p.ns.Run("getent", "ahosts", name)
	if err != nil {
		return out, err
	}
	var addrs []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && !contains(addrs, f[0]) {
			addrs = append(addrs, f[0])
		}
	}
	sort.Strings(addrs) // glibc orders by RFC 6724, which depends on the routes
	return strings.Join(addrs, " "), nil
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func TestGlibcInPod(t *testing.T) {
	p := startPod(t)
	cases := []struct{ name, want string }{
		{"httpbin.mesh", "240.0.0.1 fd00::1"},
		{"httpbin.org", "240.0.0.2"},                    // a real name answered with its VIP
		{"www.example.test", "192.0.2.10 2001:db8::10"}, // forwarded after the search expansions
		{"alias.example.test", "192.0.2.10 2001:db8::10"},
	}
	for _, c := range cases {
		got, err := p.getent(c.name)
		if err != nil || got != c.want {
			t.Errorf("getent ahosts %s = %q (%v), want %q\n%s", c.name, got, err, c.want, p.shunt.Output())
		}
	}
	if out, err := p.getent("nope.mesh"); err == nil {
		t.Errorf("getent ahosts nope.mesh succeeded: %s", out)
	}
	// ndots:5 makes glibc try httpbin.mesh.default.svc.cluster.local first;
	// the shortcut answers it with a CNAME at once.
	out := p.ns.MustRun("dig", "+noall", "+answer", "@127.0.0.1", "httpbin.mesh.default.svc.cluster.local")
	if flat := strings.Join(strings.Fields(out), " "); !strings.Contains(flat, "CNAME httpbin.mesh. httpbin.mesh. 30 IN A 240.0.0.1") {
		t.Errorf("search-domain shortcut:\n%s", out)
	}
}

func TestTableFileReload(t *testing.T) {
	p := startPod(t)
	must(t, os.WriteFile(p.table, []byte("httpbin.mesh: [240.0.0.9]\nnew.mesh: [240.0.0.10]\n"), 0o644))
	waitFor(t, func() bool { got, _ := p.getent("new.mesh"); return got == "240.0.0.10" }, "new.mesh after the reload")
	if got, _ := p.getent("httpbin.mesh"); got != "240.0.0.9" {
		t.Errorf("httpbin.mesh after reload = %q", got)
	}
	// A bad file is reported with the name and value; the last good table stays.
	must(t, os.WriteFile(p.table, []byte("httpbin.mesh: [240.0.0.999]\n"), 0o644))
	waitFor(t, func() bool { return strings.Contains(p.shunt.Output(), `240.0.0.999`) }, "the rejected table in the log")
	if !strings.Contains(p.shunt.Output(), `httpbin.mesh`) {
		t.Errorf("the error does not name the entry:\n%s", p.shunt.Output())
	}
	if got, _ := p.getent("new.mesh"); got != "240.0.0.10" {
		t.Errorf("after a bad file new.mesh = %q, want the last good table", got)
	}
}

func waitFor(t *testing.T, f func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestUpstreamBypass checks both ways shunt's own queries escape capture,
// with rules in the pod namespace that stand in for the capture rules:
// DNS to the upstream is rejected unless it carries the mark 0x5348 or comes
// from the proxy's UID 5678.
func TestUpstreamBypass(t *testing.T) {
	testenv.RequireBinary(t, "iptables")
	p := startPod(t, "--cache-size", "0")
	for _, rule := range [][]string{
		{"-A", "OUTPUT", "-d", "127.0.0.2", "-p", "udp", "--dport", "53", "-m", "mark", "--mark", "0x5348", "-j", "ACCEPT"},
		{"-A", "OUTPUT", "-d", "127.0.0.2", "-p", "udp", "--dport", "53", "-m", "owner", "--uid-owner", "5678", "-j", "ACCEPT"},
		{"-A", "OUTPUT", "-d", "127.0.0.2", "-p", "udp", "--dport", "53", "-j", "REJECT"},
		{"-A", "OUTPUT", "-d", "127.0.0.2", "-p", "tcp", "--dport", "53", "-j", "REJECT", "--reject-with", "tcp-reset"},
	} {
		p.ns.MustRun("iptables", rule...)
	}
	// The rules bite: an unmarked query from root is rejected...
	if out, err := p.ns.Run("dig", "+tries=1", "+time=1", "@127.0.0.2", "www.example.test"); err == nil && strings.Contains(out, "192.0.2.10") {
		t.Fatalf("the stand-in capture rules let an unmarked query through:\n%s", out)
	}
	// ...while shunt (root, default mark) gets through.
	if got, err := p.getent("www.example.test"); err != nil || got != "192.0.2.10 2001:db8::10" {
		t.Errorf("marked upstream queries: getent = %q %v\n%s", got, err, p.shunt.Output())
	}

	// As the proxy's UID without CAP_NET_ADMIN the default mark cannot be set:
	// shunt refuses to start and says what to do.
	bin := shuntBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := p.ns.CommandAs(ctx, 5678, 5678, bin, "dns", "--listen", "127.0.0.1:15053", "--upstream", "127.0.0.2").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "CAP_NET_ADMIN") || !strings.Contains(string(out), "--upstream-mark 0") {
		t.Errorf("shunt dns as UID 5678 with the default mark: err %v, output:\n%s", err, out)
	}
	// With --upstream-mark 0 it runs, and the UID exemption lets it through.
	uidShunt := p.ns.Start(p.ns.CommandAs(context.Background(), 5678, 5678, bin, "dns", "--listen", "127.0.0.1:15053",
		"--upstream", "127.0.0.2", "--upstream-mark", "0", "--resolv-conf", ""))
	waitAnswer(t, p.ns, netipAP("127.0.0.1:15053"), "www.example.test", "192.0.2.10", uidShunt)
}

package dns_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/tests/testenv"
)

var meshNames = map[string][]netip.Addr{
	"httpbin.mesh": {netip.MustParseAddr("240.0.0.1"), netip.MustParseAddr("fd00::1")},
	"httpbin.org":  {netip.MustParseAddr("240.0.0.2")},
	"*.wild.mesh":  {netip.MustParseAddr("240.0.0.3")},
}

// startShunt runs the interceptor in-process on a free loopback port.
func startShunt(t *testing.T, cfg dnsproxy.Config) (*dnsproxy.Server, netip.AddrPort) {
	t.Helper()
	cfg.Listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}
	cfg.Logger = slog.New(slog.DiscardHandler)
	if cfg.Table == nil {
		cfg.Table = dnsproxy.MustTable(meshNames, dnsproxy.TableOptions{})
	}
	srv, err := dnsproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return srv, srv.Addrs()[0].(*net.UDPAddr).AddrPort()
}

// dig runs dig (or kdig) against addr and returns its output.
func dig(t *testing.T, tool string, addr netip.AddrPort, args ...string) string {
	t.Helper()
	testenv.RequireBinary(t, tool)
	full := append([]string{"-p", fmt.Sprint(addr.Port()), "@" + addr.Addr().String()}, args...)
	out, err := digTool(tool, full...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(full, " "), err, out)
	}
	return out
}

func digTool(tool string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := execCommand(ctx, tool, args...).CombinedOutput()
	return string(out), err
}

// answerLines returns the status and the sorted answer records of a dig
// +nottlid output, which is what must not change when shunt is in between.
func answerLines(out string) (status string, rrs []string) {
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "status: "); i >= 0 {
			status = strings.TrimSuffix(strings.Fields(l[i+8:])[0], ",")
		}
		if l == "" || strings.HasPrefix(l, ";") {
			continue
		}
		rrs = append(rrs, strings.Join(strings.Fields(l), " "))
	}
	sort.Strings(rrs)
	return status, rrs
}

func TestForwardedAnswersAreTransparent(t *testing.T) {
	testenv.RequireRoot(t)
	up := startNamed(t, nil, loopbackAddr())
	srv, shunt := startShunt(t, dnsproxy.Config{Upstreams: []netip.AddrPort{up.addr}, Cache: dnsproxy.CacheOptions{Size: 1000}})
	queries := [][]string{
		{"www.example.test", "A"}, {"www.example.test", "AAAA"}, {"alias.example.test", "A"},
		{"example.test", "MX"}, {"txt.example.test", "TXT"}, {"_http._tcp.example.test", "SRV"},
		{"missing.example.test", "A"}, {"www.example.test", "MX"}, {"big.example.test", "TXT"},
		{"example.test", "SOA"}, {"example.test", "NS"},
	}
	for _, q := range queries {
		for _, transport := range []string{"+notcp", "+tcp"} {
			// Twice: the second answer comes from shunt's cache.
			for i := 0; i < 2; i++ {
				args := []string{"+nottlid", "+noall", "+answer", "+comments", transport, q[0], q[1]}
				ws, wa := answerLines(dig(t, "dig", up.addr, args...))
				gs, ga := answerLines(dig(t, "dig", shunt, args...))
				if ws != gs || !slices.Equal(wa, ga) {
					t.Errorf("%s %s %s (pass %d): upstream says %s %q, through shunt %s %q", q[0], q[1], transport, i, ws, wa, gs, ga)
				}
			}
		}
	}
	if hits := srv.Metrics().Snapshot().CacheHits; hits == 0 {
		t.Error("no answer came from the cache")
	}
	// A cached name asked with another spelling: the question is echoed as
	// asked (0x20-randomising resolvers check it) and the answer is the same.
	for _, transport := range []string{"+notcp", "+tcp"} {
		out := dig(t, "dig", shunt, "+noall", "+question", "+answer", "+nottlid", transport, "WwW.ExAmPle.TeSt", "A")
		if !strings.Contains(out, ";WwW.ExAmPle.TeSt.") || !strings.Contains(out, "192.0.2.10") {
			t.Errorf("mixed-case query %s through the cache:\n%s", transport, out)
		}
	}
	// kdig (Knot) as a second client implementation, over TCP and UDP with EDNS.
	for _, args := range [][]string{{"+tcp"}, {"+notcp", "+bufsize=4096"}} {
		full := append(args, "+noall", "+answer", "alias.example.test", "A")
		out := dig(t, "kdig", shunt, full...)
		if !strings.Contains(out, "192.0.2.10") || !strings.Contains(out, "alias2.example.test.") {
			t.Errorf("kdig %v: CNAME chain not resolved through shunt:\n%s", args, out)
		}
	}
}

func TestTableAnswersThroughRealClients(t *testing.T) {
	_, shunt := startShunt(t, dnsproxy.Config{UnknownNames: dnsproxy.UnknownRefused})
	cases := []struct {
		tool string
		args []string
		want []string
	}{
		{"dig", []string{"httpbin.mesh", "A"}, []string{"flags: qr aa rd ra", "httpbin.mesh.\t\t30\tIN\tA\t240.0.0.1"}},
		{"dig", []string{"+tcp", "HTTPBIN.Mesh", "AAAA"}, []string{"HTTPBIN.Mesh.\t\t30\tIN\tAAAA\tfd00::1"}},
		{"dig", []string{"+dnssec", "httpbin.mesh"}, []string{"flags: do; udp: 1232", "240.0.0.1"}},
		{"dig", []string{"+noedns", "deep.x.wild.mesh"}, []string{"240.0.0.3"}},
		{"dig", []string{"httpbin.org", "AAAA"}, []string{"status: NOERROR", "ANSWER: 0"}},
		{"dig", []string{"nope.mesh"}, []string{"status: NXDOMAIN", "flags: qr aa"}},
		{"dig", []string{"unknown.example"}, []string{"status: REFUSED"}},
		{"kdig", []string{"+tcp", "httpbin.mesh", "A"}, []string{"240.0.0.1", "qr aa rd ra"}},
		{"kdig", []string{"+bufsize=512", "+dnssec", "httpbin.mesh", "AAAA"}, []string{"fd00::1", "EDNS", "DO"}},
	}
	for _, c := range cases {
		out := dig(t, c.tool, shunt, c.args...)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s %v: output lacks %q:\n%s", c.tool, c.args, w, out)
			}
		}
	}
}

func TestGoResolver(t *testing.T) {
	testenv.RequireRoot(t)
	up := startNamed(t, nil, loopbackAddr())
	_, shunt := startShunt(t, dnsproxy.Config{Upstreams: []netip.AddrPort{up.addr}, Cache: dnsproxy.CacheOptions{Size: 100}})
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, shunt.String())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hosts, err := r.LookupHost(ctx, "httpbin.mesh")
	sort.Strings(hosts)
	if err != nil || strings.Join(hosts, " ") != "240.0.0.1 fd00::1" {
		t.Errorf("LookupHost(httpbin.mesh) = %v, %v", hosts, err)
	}
	// A one-step alias: for a chain, Go's resolver reports the first target
	// of whichever of its parallel A, AAAA and CNAME answers lands first.
	if cname, err := r.LookupCNAME(ctx, "alias2.example.test"); err != nil || cname != "www.example.test." {
		t.Errorf("LookupCNAME = %q, %v", cname, err)
	}
	if mx, err := r.LookupMX(ctx, "example.test"); err != nil || len(mx) != 1 || mx[0].Host != "mail.example.test." {
		t.Errorf("LookupMX = %v, %v", mx, err)
	}
	if _, srv, err := r.LookupSRV(ctx, "http", "tcp", "example.test"); err != nil || len(srv) != 1 || srv[0].Port != 80 {
		t.Errorf("LookupSRV = %v, %v", srv, err)
	}
	// 30 TXT strings (6 kB): Go's resolver gets TC over UDP and retries over TCP.
	if txt, err := r.LookupTXT(ctx, "big.example.test"); err != nil || len(txt) != 30 {
		t.Errorf("LookupTXT(big) = %d strings, %v", len(txt), err)
	}
	_, err = r.LookupHost(ctx, "missing.example.test")
	if dnsErr, ok := err.(*net.DNSError); !ok || !dnsErr.IsNotFound {
		t.Errorf("LookupHost(missing) error = %v, want not found", err)
	}
}

func TestTruncationSendsClientsToTCP(t *testing.T) {
	testenv.RequireRoot(t)
	up := startNamed(t, nil, loopbackAddr())
	_, shunt := startShunt(t, dnsproxy.Config{Upstreams: []netip.AddrPort{up.addr}, Cache: dnsproxy.CacheOptions{Size: 100}})
	for _, args := range [][]string{{"+noedns"}, {"+bufsize=1232"}} {
		out := dig(t, "dig", shunt, append([]string{"+ignore", "big.example.test", "TXT"}, args...)...)
		if !strings.Contains(out, " tc ") && !strings.Contains(out, " tc;") {
			t.Errorf("dig +ignore %v: a 6 kB answer over UDP without the TC bit:\n%s", args, out)
		}
		// Without +ignore dig retries over TCP and gets everything.
		_, rrs := answerLines(dig(t, "dig", shunt, append([]string{"+noall", "+answer", "big.example.test", "TXT"}, args...)...))
		if len(rrs) != 30 {
			t.Errorf("dig %v after the TCP retry: %d records, want 30", args, len(rrs))
		}
	}
	out := dig(t, "dig", shunt, "+bufsize=65000", "+noall", "+answer", "+comments", "big.example.test", "TXT")
	if _, rrs := answerLines(out); len(rrs) != 30 || strings.Contains(out, " tc") {
		t.Errorf("with a 65000-byte buffer the whole answer fits UDP; got %d records\n%s", len(rrs), out)
	}
}

func TestFailoverAndServeStale(t *testing.T) {
	testenv.RequireRoot(t)
	n1 := startNamed(t, nil, loopbackAddr())
	n2 := startNamed(t, nil, loopbackAddr())
	ups := []netip.AddrPort{n1.addr, n2.addr}
	srv, shunt := startShunt(t, dnsproxy.Config{Upstreams: ups, HedgeDelay: 100 * time.Millisecond, QueryTimeout: time.Second})
	_, stale := startShunt(t, dnsproxy.Config{Upstreams: ups, QueryTimeout: time.Second, Cache: dnsproxy.CacheOptions{Size: 100, ServeStale: true}})
	query := func(addr netip.AddrPort, name string) (string, []string, time.Duration) {
		start := time.Now()
		s, rrs := answerLines(dig(t, "dig", addr, "+tries=1", "+time=5", "+noall", "+answer", "+comments", name))
		return s, rrs, time.Since(start)
	}
	if s, rrs, _ := query(stale, "short.example.test"); s != "NOERROR" || len(rrs) != 1 {
		t.Fatalf("short.example.test: %s %v", s, rrs)
	}
	n1.proc.Stop()
	for _, name := range []string{"www.example.test", "mail.example.test", "ns.example.test"} {
		s, rrs, took := query(shunt, name)
		if s != "NOERROR" || len(rrs) != 1 {
			t.Errorf("with the first upstream stopped, %s: %s %v", name, s, rrs)
		}
		if took > 900*time.Millisecond {
			t.Errorf("with the first upstream stopped, %s took %v", name, took)
		}
	}
	var failures uint64
	for _, u := range srv.Metrics().Snapshot().Upstreams {
		if u.Addr == n1.addr {
			failures = u.Failures
		}
	}
	if failures == 0 {
		t.Errorf("no failure counted for the stopped upstream %s: %+v", n1.addr, srv.Metrics().Snapshot().Upstreams)
	}
	n2.proc.Stop()
	if s, _, took := query(shunt, "alias.example.test"); s != "SERVFAIL" || took > 3*time.Second {
		t.Errorf("with every upstream stopped: %s after %v, want SERVFAIL within the query timeout", s, took)
	}
	time.Sleep(1100 * time.Millisecond) // short.example.test has TTL 1
	if s, rrs, _ := query(stale, "short.example.test"); s != "NOERROR" || len(rrs) != 1 || !strings.Contains(rrs[0], "30 IN A 192.0.2.99") {
		t.Errorf("serve-stale with every upstream stopped: %s %v, want the stale record with TTL 30", s, rrs)
	}
}

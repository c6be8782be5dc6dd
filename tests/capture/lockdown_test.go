package capture_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/iptables"
	"github.com/shunt-dev/shunt/redirect/nftables"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestLockdownResolvesIPv6Neighbours locks egress down with every netfilter
// engine and connects over IPv6 to a host on the link that neither side
// has a neighbour entry for: the pod's neighbour solicitation and its
// answers to the remote's own are link plumbing, not egress, and must pass
// or no IPv6 destination is reachable, allowed ones included. A destination
// outside the plan is still refused at once.
func TestLockdownResolvesIPv6Neighbours(t *testing.T) {
	for _, backend := range []string{"nft", "legacy", nativeNftables} {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			w.serveHTTP(8080, 8081)
			cfg := redirect.NewConfig()
			for k, v := range map[string]string{"netns": w.pod.Path(), "resolvConf": filepath.Join("/etc/netns", w.pod.Name(), "resolv.conf")} {
				if err := cfg.Set(k, v, "test"); err != nil {
					t.Fatal(err)
				}
			}
			p, err := cfg.Plan(redirect.OSHost{})
			if err != nil {
				t.Fatal(err)
			}
			p.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("fd00:1::3/128")},
				Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[fd00:1::2]:8081")}}
			eng := w.engine(backend)
			if err := eng.Install(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = eng.Uninstall(context.Background()) })
			if st, err := eng.Status(context.Background()); err != nil || len(st.Drift) != 0 {
				t.Fatalf("status right after install: %v, drift %q", err, st.Drift)
			}

			cases := []struct {
				url, body string
				ok        bool
			}{
				{"http://[fd00:1::2]:8081/", "remote:8081", true}, // endpoint
				{"http://[fd00:1::3]:8080/", "remote:8080", true}, // allowed range
				{"http://[fd00:1::2]:8080/", "", false},           // endpoint's host, other port
			}
			for _, c := range cases {
				// Each connection starts with no neighbour entry on
				// either side, so the pod has to solicit and answer.
				for _, h := range []testenv.Host{w.podIf, w.remoteIf} {
					h.NS.MustRun("ip", "-6", "neigh", "flush", "dev", h.Dev)
				}
				got, err := w.curl(proxyUID, c.url)
				if c.ok && (err != nil || got != c.body) {
					t.Errorf("proxy GET %s = %q, %v; want %q\nneighbours:\n%s", c.url, got, err, c.body,
						strings.TrimSpace(w.pod.MustRun("ip", "-6", "neigh", "show", "dev", w.podIf.Dev)))
				}
				if !c.ok && !refused(got, err) {
					t.Errorf("proxy GET %s = %q, %v; want refused at once (TCP reset)", c.url, got, err)
				}
			}
			// The remote resolving the pod needs the pod's neighbour
			// advertisement, which conntrack does not track either.
			for _, h := range []testenv.Host{w.podIf, w.remoteIf} {
				h.NS.MustRun("ip", "-6", "neigh", "flush", "dev", h.Dev)
			}
			// A port nothing listens on answers with a reset: proof
			// that the remote resolved the pod.
			dst := netip.AddrPortFrom(w.podIf.IPv6, 9).String()
			err = w.remote.Do(func() error {
				// From the address only a port is allowed to, so
				// that nothing but the pod's advertisement rule lets
				// the advertisement out.
				d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: w.remoteIf.IPv6.AsSlice()}}
				c, err := d.Dial("tcp", dst)
				if err == nil {
					c.Close()
				}
				return err
			})
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("remote dial %s under lockdown: %v; want connection refused by the pod", dst, err)
			}
		})
	}
}

// TestLockdownFailsClosedWithoutNAT locks egress down with every netfilter
// engine, then removes the outbound redirect as a flush of the nat rules
// does until the agent repairs them. The application's TCP to an allowed
// destination must then be reset, not go there around the proxy, and its
// DNS queries (UDP and TCP) to the nameserver capture sends to the
// interceptor must be refused, not answered by that nameserver; the
// proxy's own UID still reaches both. With redirectAllDNS the same holds
// for any port-53 destination.
func TestLockdownFailsClosedWithoutNAT(t *testing.T) {
	for _, backend := range []string{"nft", "legacy", nativeNftables} {
		for _, allDNS := range []bool{false, true} {
			name := backend
			if allDNS {
				name += "/redirect-all-dns"
			}
			t.Run(name, func(t *testing.T) { lockdownWithoutNAT(t, backend, allDNS) })
		}
	}
}

func lockdownWithoutNAT(t *testing.T, backend string, allDNS bool) {
	w := newWorld(t, backend)
	w.serveHTTP(8080)
	// The upstream nameservers of the pod's resolv.conf, and with
	// redirectAllDNS another server in an allowed range.
	serveDNS(t, w.remote, "10.1.0.2:53", "192.0.2.7")
	serveDNS(t, w.remote, "[fd00:1::2]:53", "192.0.2.7")
	serveDNS(t, w.remote, "10.1.0.3:53", "192.0.2.8")
	cfg := redirect.NewConfig()
	set := map[string]string{"netns": w.pod.Path(), "resolvConf": filepath.Join("/etc/netns", w.pod.Name(), "resolv.conf")}
	if allDNS {
		set["redirectAllDNS"] = "true"
	}
	for k, v := range set {
		if err := cfg.Set(k, v, "test"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := cfg.Plan(redirect.OSHost{})
	if err != nil {
		t.Fatal(err)
	}
	p.Egress = &redirect.Egress{Allowed: []netip.Prefix{
		netip.MustParsePrefix("10.1.0.2/32"), netip.MustParsePrefix("fd00:1::2/128"), netip.MustParsePrefix("10.1.0.3/32")}}
	eng := w.engine(backend)
	if err := eng.Install(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Uninstall(context.Background()) })

	// What the nat rules were: gone, the filter rules stay.
	if backend == nativeNftables {
		w.pod.MustRun("nft", "flush", "chain", "inet", "shunt", "output")
	} else {
		w.pod.MustRun("iptables-"+backend, "-t", "nat", "-F")
		w.pod.MustRun("ip6tables-"+backend, "-t", "nat", "-F")
	}
	for _, url := range []string{"http://10.1.0.2:8080/", "http://[fd00:1::2]:8080/"} {
		if got, err := w.curl(appUID, url); !refused(got, err) {
			t.Errorf("app GET %s with the nat rules gone = %q, %v; want refused at once (TCP reset), not unproxied", url, got, err)
		}
		if got, err := w.curl(proxyUID, url); err != nil || got != "remote:8080" {
			t.Errorf("proxy GET %s with the nat rules gone = %q, %v; want %q", url, got, err, "remote:8080")
		}
	}
	type query struct {
		args []string
		want string
	}
	queries := []query{
		{[]string{"@10.1.0.2", "example.com"}, "192.0.2.7"},
		{[]string{"+tcp", "@10.1.0.2", "example.com"}, "192.0.2.7"},
		{[]string{"@fd00:1::2", "example.com"}, "192.0.2.7"},
		{[]string{"+tcp", "@fd00:1::2", "example.com"}, "192.0.2.7"},
	}
	if allDNS {
		queries = append(queries, query{[]string{"@10.1.0.3", "example.com"}, "192.0.2.8"})
	}
	for _, q := range queries {
		start := time.Now()
		if got := w.dig(appUID, q.args...); strings.Contains(got, q.want) {
			t.Errorf("app dig %v with the nat rules gone was answered by the upstream: %q; want no answer", q.args, got)
		} else if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("app dig %v with the nat rules gone took %v; want refused at once, not a timeout", q.args, d)
		}
		if got := w.dig(proxyUID, q.args...); got != q.want {
			t.Errorf("proxy dig %v with the nat rules gone = %q, want %q", q.args, got, q.want)
		}
	}
}

// TestLockdownHoldsWithoutFilterRules locks egress down with every netfilter
// engine, then flushes the filter rules (iptables -F and ip6tables -F; the
// nftables engine's filter_output chain) as an administrator's script may
// do before the agent repairs them. Nothing may leave for a destination
// the mesh does not allow, whoever sends it (the proxy's UID, which capture
// never redirects; the application's UDP, which it does not capture): a
// counter on the destination host sees no packet. Allowed destinations
// still answer.
func TestLockdownHoldsWithoutFilterRules(t *testing.T) {
	for _, backend := range []string{"nft", "legacy", nativeNftables} {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			w.serveHTTP(8080)
			cfg := redirect.NewConfig()
			for k, v := range map[string]string{"netns": w.pod.Path(), "resolvConf": filepath.Join("/etc/netns", w.pod.Name(), "resolv.conf")} {
				if err := cfg.Set(k, v, "test"); err != nil {
					t.Fatal(err)
				}
			}
			p, err := cfg.Plan(redirect.OSHost{})
			if err != nil {
				t.Fatal(err)
			}
			p.Egress = &redirect.Egress{Allowed: []netip.Prefix{
				netip.MustParsePrefix("10.1.0.2/32"), netip.MustParsePrefix("fd00:1::2/128")}}
			eng := w.engine(backend)
			if err := eng.Install(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = eng.Uninstall(context.Background()) })

			// The remote counts what reaches its addresses outside the
			// allow list (a table in its own namespace).
			w.remote.MustRun("nft", "add table inet count")
			w.remote.MustRun("nft", "add chain inet count in { type filter hook prerouting priority -400; }")
			w.remote.MustRun("nft", "add rule inet count in ip daddr 10.1.0.3 counter")
			w.remote.MustRun("nft", "add rule inet count in ip6 daddr fd00:1::3 counter")

			if backend == nativeNftables {
				w.pod.MustRun("nft", "flush", "chain", "inet", "shunt", "filter_output")
			} else {
				w.pod.MustRun("iptables-"+backend, "-F")
				w.pod.MustRun("ip6tables-"+backend, "-F")
			}
			for _, host := range []string{"10.1.0.3", "[fd00:1::3]"} {
				url := "http://" + host + ":8080/"
				if got, err := w.curlFor(proxyUID, 2, url); err == nil {
					t.Errorf("proxy GET %s with the filter rules gone = %q; want no connection", url, got)
				}
				// UDP from the application: capture leaves it alone.
				w.dig(appUID, "+tries=1", "+time=1", "-p", "9999", "@"+strings.Trim(host, "[]"), "example.com")
			}
			for _, url := range []string{"http://10.1.0.2:8080/", "http://[fd00:1::2]:8080/"} {
				if got, err := w.curl(proxyUID, url); err != nil || got != "remote:8080" {
					t.Errorf("proxy GET %s with the filter rules gone = %q, %v; want %q", url, got, err, "remote:8080")
				}
			}
			out := w.remote.MustRun("nft", "list chain inet count in")
			if !strings.Contains(out, "10.1.0.3 counter packets 0 ") || !strings.Contains(out, "fd00:1::3 counter packets 0 ") {
				t.Errorf("packets reached destinations outside the allow list with the filter rules gone:\n%s", out)
			}
		})
	}
}

// curlFor is curl with a time limit of secs seconds.
func (w *world) curlFor(uid, secs int, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+5)*time.Second)
	defer cancel()
	out, err := w.pod.CommandAs(ctx, uid, uid, "curl", "-sS", "--max-time", fmt.Sprint(secs), url).CombinedOutput()
	return string(out), err
}

// engine is the capture engine the lockdown tests install directly:
// the nftables engine, or the iptables engine on the given backend.
func (w *world) engine(backend string) redirect.Engine {
	if backend == nativeNftables {
		return nftables.New(nftables.Options{NetnsPath: w.pod.Path(), StateDir: w.stateDir})
	}
	return iptables.New(iptables.Options{NetnsPath: w.pod.Path(), StateDir: w.stateDir, Backend: backend})
}

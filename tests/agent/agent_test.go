package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// The page's first example and its tcp variant, in one pod: TLS originated
// by the proxy (SNI, CA, client certificate), the real name through the
// builtin DNS, and the application's own TLS passed through untouched.
func TestExternalServicesThroughTheProxy(t *testing.T) {
	forEachEngine(t, testExternalServicesThroughTheProxy)
}

func testExternalServicesThroughTheProxy(t *testing.T, engine string) {
	w := newWorldWith(t, engine)
	w.writeResource("services.yaml",
		externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil))+
			externalService("httpbin-mtls", "httpbin-mtls", "http", "mtls.httpbin.org:8443", tlsBlock("mtls.httpbin.org", w.ca.cert, &w.client))+
			externalService("httpbin-nocert", "httpbin-nocert", "http", "10.1.0.2:8443", tlsBlock("mtls.httpbin.org", w.ca.cert, nil))+
			externalService("wrong-ca", "wrong-ca", "http", "10.1.0.2:443", tlsBlock("httpbin.org", w.wrongCA.cert, nil))+
			externalService("secure", "secure", "tcp", "secure.httpbin.org:443", ""))
	w.startAgent("")
	w.startProxy()

	t.Run("mesh name, TLS originated by the proxy", func(t *testing.T) {
		got, err := w.curl(appUID, "http://httpbin.mesh/")
		if err != nil || got != "httpbin sni=httpbin.org client=" {
			t.Fatalf("curl http://httpbin.mesh/ = %q, %v\n%s", got, err, w.logs())
		}
		if !strings.Contains(w.proxy.Output(), "cluster=external:httpbin upstream=10.1.0.2:443 tls=sni:httpbin.org") {
			t.Errorf("the proxy did not originate TLS to httpbin.org:\n%s", w.proxy.Output())
		}
	})
	t.Run("client certificate where the server requires one", func(t *testing.T) {
		got, err := w.curl(appUID, "http://httpbin-mtls.mesh/")
		if err != nil || got != "mtls sni=mtls.httpbin.org client=CN=shunt-test-client" {
			t.Fatalf("curl http://httpbin-mtls.mesh/ = %q, %v\n%s", got, err, w.logs())
		}
		if got, err := w.curl(appUID, "http://httpbin-nocert.mesh/"); err == nil && strings.Contains(got, "mtls sni") {
			t.Errorf("a service without client certificate was served by the mTLS host: %q", got)
		}
	})
	t.Run("wrong CA fails", func(t *testing.T) {
		got, err := w.curl(appUID, "http://wrong-ca.mesh/")
		if err == nil && strings.Contains(got, "httpbin") {
			t.Fatalf("a server not signed by the configured CA was trusted: %q", got)
		}
		if !strings.Contains(w.proxy.Output(), "cluster=external:wrong-ca failed: TLS") {
			t.Errorf("the proxy did not refuse the server's certificate:\n%s", w.proxy.Output())
		}
	})
	t.Run("real name and port through the builtin DNS", func(t *testing.T) {
		vip := w.dig("httpbin.org")
		if a, err := netip.ParseAddr(vip); err != nil || !netip.MustParsePrefix("240.0.0.0/4").Contains(a) {
			t.Fatalf("httpbin.org resolved to %q in the pod, want a VIP", vip)
		}
		got, err := w.curl(appUID, "http://httpbin.org:443/")
		if err != nil || got != "httpbin sni=httpbin.org client=" {
			t.Fatalf("curl http://httpbin.org:443/ = %q, %v\n%s", got, err, w.logs())
		}
		// curl may take either family's VIP: both lead to the proxy.
		vip6 := w.digType("httpbin.org", "AAAA")
		if a, err := netip.ParseAddr(vip6); err != nil || !a.Is6() {
			t.Fatalf("httpbin.org has no IPv6 VIP in the pod: %q", vip6)
		}
		log := w.proxy.Output()
		if !strings.Contains(log, "orig="+vip+":443 cluster=external:httpbin") && !strings.Contains(log, "orig=["+vip6+"]:443 cluster=external:httpbin") {
			t.Errorf("the connection to %s:443 / [%s]:443 did not go through the proxy:\n%s", vip, vip6, log)
		}
	})
	t.Run("tcp service: the application's TLS passes through", func(t *testing.T) {
		ca := w.dir + "/nginx/ca.crt"
		got, err := w.curl(appUID, "--cacert", ca, "https://secure.httpbin.org/")
		if err != nil || got != "httpbin sni=secure.httpbin.org client=" {
			t.Fatalf("curl https://secure.httpbin.org/ = %q, %v\n%s", got, err, w.logs())
		}
		if !strings.Contains(w.proxy.Output(), "cluster=external:secure upstream=10.1.0.2:443 tls=none") {
			t.Errorf("the app's TLS connection did not go through the proxy as plain TCP:\n%s", w.proxy.Output())
		}
	})
	t.Run("passthrough on: other destinations reached directly through the proxy", func(t *testing.T) {
		got, err := w.curl(appUID, "http://10.1.0.2:80/")
		if err != nil || !strings.HasPrefix(got, "httpbin") {
			t.Fatalf("curl http://10.1.0.2/ = %q, %v\n%s", got, err, w.logs())
		}
		if !strings.Contains(w.proxy.Output(), "orig=10.1.0.2:80 cluster=passthrough") {
			t.Errorf("passthrough did not go through the proxy:\n%s", w.proxy.Output())
		}
	})

	t.Run("a new ExternalService resolves and routes within 1s", func(t *testing.T) {
		start := time.Now()
		w.writeResource("new.yaml", externalService("fresh", "fresh", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
		var got string
		for time.Since(start) < 3*time.Second {
			if got, _ = w.curl(appUID, "--max-time", "1", "http://fresh.mesh/"); got == "httpbin sni=httpbin.org client=" {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(start)
		if got != "httpbin sni=httpbin.org client=" || took > time.Second {
			t.Fatalf("fresh.mesh answered %q after %v, want httpbin's answer within 1s\n%s", got, took, w.logs())
		}
		t.Logf("new ExternalService routed after %v", took.Round(time.Millisecond))
	})
	t.Run("a broken file changes nothing and is reported", func(t *testing.T) {
		before := w.dig("fresh.mesh")
		w.writeResource("broken.yaml", "type: ExternalService\nname: broken\ntags:\n  kuma.io/service: broken\nnetworking:\n  address: no-port.example\n")
		waitFor(t, "the broken file to be reported", func() bool {
			return strings.Contains(w.agent.Output(), "broken.yaml")
		}, w.agent.Output)
		time.Sleep(500 * time.Millisecond)
		if got := w.dig("fresh.mesh"); got != before || got == "" {
			t.Errorf("fresh.mesh went from %q to %q after a broken file", before, got)
		}
		if got, err := w.curl(appUID, "http://httpbin.mesh/"); err != nil || !strings.HasPrefix(got, "httpbin") {
			t.Errorf("httpbin.mesh stopped working after a broken file: %q, %v", got, err)
		}
		if got := w.dig("broken.mesh"); got != "" {
			t.Errorf("broken.mesh resolved to %q", got)
		}
	})

	t.Run("rules flushed by someone else are restored within seconds", func(t *testing.T) {
		if engine == "ebpf" {
			// Someone detaches the outbound hook.
			bpftool := testenv.RequireBinary(t, "bpftool")
			if out, err := exec.Command(bpftool, "link", "detach", "pinned", filepath.Join(w.pinDir, "link_connect4")).CombinedOutput(); err != nil {
				t.Fatalf("bpftool link detach: %v\n%s", err, out)
			}
		} else if engine == "nftables" {
			testenv.RequireBinary(t, "nft")
			w.pod.MustRun("nft", "flush", "chain", "inet", "shunt", "output4")
		} else if _, err := w.pod.Run("iptables", "-t", "nat", "-F", "SHUNT_OUTPUT"); err != nil {
			t.Skip("cannot flush with the default iptables in this namespace")
		}
		start := time.Now()
		waitFor(t, "the drift to be repaired", func() bool {
			return strings.Contains(w.agent.Output(), "capture rules drifted")
		}, w.agent.Output)
		waitFor(t, "httpbin.mesh to work again", func() bool {
			got, _ := w.curl(appUID, "http://httpbin.mesh/")
			return strings.HasPrefix(got, "httpbin")
		}, w.logs)
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("restored after %v", took)
		}
		_, metrics := w.admin("/metrics")
		if !strings.Contains(metrics, "shunt_capture_drift_repairs_total 1") {
			t.Errorf("repair not counted once in /metrics:\n%s", grepLines(metrics, "shunt_capture"))
		}
	})
}

// With passthrough disabled, nothing but the mesh's destinations is
// reachable, by any user, and refusals are immediate.
func TestPassthroughDisabled(t *testing.T) { forEachEngine(t, testPassthroughDisabled) }

func testPassthroughDisabled(t *testing.T, engine string) {
	w := newWorldWith(t, engine)
	w.writeResource("mesh.yaml", "type: Mesh\nname: default\nnetworking:\n  outbound:\n    passthrough: false\n")
	w.writeResource("services.yaml", externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
	w.startAgent("")
	w.startProxy()

	if got, err := w.curl(appUID, "http://httpbin.mesh/"); err != nil || !strings.HasPrefix(got, "httpbin sni=httpbin.org") {
		t.Fatalf("curl http://httpbin.mesh/ under lockdown = %q, %v\n%s", got, err, w.logs())
	}
	for _, uid := range []int{appUID, proxyUID, 0} {
		start := time.Now()
		got, err := w.curl(uid, "http://"+otherIP+":80/")
		took := time.Since(start)
		if err == nil && strings.Contains(got, "httpbin") {
			t.Errorf("uid %d reached the internet directly: %q", uid, got)
		}
		if took > time.Second {
			// A silent drop would run into curl's 3 s timeout; the
			// 100 ms bound is checked below without curl's start-up,
			// which a loaded machine can stretch.
			t.Errorf("uid %d: refusal took %v, want it immediate", uid, took)
		}
		t.Logf("uid %d refused after %v: %s", uid, took.Round(time.Millisecond), got)
	}
	// Measured without process start-up: a connection from the pod, as
	// the proxy's user (not captured, so only the lockdown refuses it).
	took := dialTime(t, w, proxyUID, otherIP+":80")
	if took > 100*time.Millisecond {
		t.Errorf("non-mesh connection failed after %v, want under 100ms", took)
	}
	t.Logf("non-mesh connection refused in %v", took)

	// httpbin.org resolves to the internet's address, an allowed endpoint
	// on 443 only: its port 80 (nginx listens there) stays out of reach,
	// for the proxy (not captured) and the application alike.
	took = dialTime(t, w, proxyUID, internetIP+":80")
	if took > 100*time.Millisecond {
		t.Errorf("another port of an endpoint's address failed after %v, want under 100ms", took)
	}
	if got, err := w.curl(appUID, "http://"+internetIP+":80/"); err == nil && strings.Contains(got, "httpbin") {
		t.Errorf("the application reached %s:80, an endpoint's address on another port: %q", internetIP, got)
	}
	t.Logf("another port of an allowed endpoint's address refused in %v", took)
}

// dialTime connects from the pod as uid with bash's /dev/tcp and returns
// how long the failure took, measured by the shell itself.
func dialTime(t *testing.T, w *world, uid int, addr string) time.Duration {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	// EPOCHREALTIME is read by bash itself: no process start-up inside
	// the measured interval.
	script := fmt.Sprintf(`s=${EPOCHREALTIME/./}; exec 3<>/dev/tcp/%s/%s 2>/dev/null && echo connected; e=${EPOCHREALTIME/./}; echo $(( e - s ))`, host, port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := w.pod.CommandAs(ctx, uid, uid, "bash", "-c", script).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if strings.Contains(s, "connected") {
		t.Fatalf("uid %d connected to %s under lockdown", uid, addr)
	}
	us, err := strconv.Atoi(s[strings.LastIndex(s, "\n")+1:])
	if err != nil {
		t.Fatalf("timing %q: %v", s, err)
	}
	return time.Duration(us) * time.Microsecond
}

// The page's ZoneEgress example: passthrough off, zone egress on; the
// application's own TLS to example.com leaves only through the egress.
func TestZoneEgress(t *testing.T) { forEachEngine(t, testZoneEgress) }

func testZoneEgress(t *testing.T, engine string) {
	w := newWorldWith(t, engine)
	w.writeResource("mesh.yaml", fmt.Sprintf(`type: Mesh
name: default
networking:
  outbound:
    passthrough: false
routing:
  zoneEgress: true
---
type: ZoneEgress
name: zoneegress-1
zone: zone-1
networking:
  address: %s
  port: %d
`, egressIP, egressPort))
	w.writeResource("services.yaml", externalService("example", "example", "tcp", "example.com:443", "  tls:\n    enabled: false\n"))
	w.startEgress()
	w.startAgent("", "--zone", "zone-1")
	w.proxy = w.pod.Start(w.pod.CommandAs(context.Background(), proxyUID, proxyUID, bins.meshproxy,
		"-xds", w.xdsSocket(), "-node-id", "pod", "-zone", "zone-1", "-resolver", internetIP+":53"))
	waitFor(t, "the proxy's configuration", func() bool { return strings.Contains(w.proxy.Output(), "routes") }, w.proxy.Output)

	got, err := w.curl(appUID, "--cacert", w.dir+"/nginx/ca.crt", "https://example.com/")
	if err != nil || got != "httpbin sni=example.com client=" {
		t.Fatalf("curl https://example.com/ = %q, %v\n%s", got, err, w.logs())
	}
	if !strings.Contains(w.proxy.Output(), fmt.Sprintf("cluster=external:example upstream=%s:%d via-egress=example.com:443", egressIP, egressPort)) {
		t.Errorf("the proxy did not send example.com through the egress:\n%s", w.proxy.Output())
	}
	if !strings.Contains(w.egressFwd.Output(), "to=example.com:443 upstream=10.1.0.2:443") {
		t.Errorf("the egress did not forward to example.com:\n%s", w.egressFwd.Output())
	}
	// The internet itself is out of reach from the pod, for the proxy too.
	for _, uid := range []int{appUID, proxyUID} {
		if got, err := w.curl(uid, "--cacert", w.dir+"/nginx/ca.crt", "--resolve", "example.com:443:"+internetIP, "https://example.com/"); err == nil {
			t.Errorf("uid %d reached the internet directly: %q", uid, got)
		}
	}
}

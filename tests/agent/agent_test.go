package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
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

	t.Run("the node's xDS reaches the proxy's user only", func(t *testing.T) {
		// A workload process subscribing as the node, through the
		// socket, gets nothing; shunt has no xDS port on TCP.
		sock := filepath.Join(w.stateDir, "xds.sock")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := w.pod.CommandAs(ctx, appUID, appUID, "curl", "-sS", "--http2-prior-knowledge", "--unix-socket", sock,
			"-X", "POST", "-H", "content-type: application/grpc", "http://pod/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources").CombinedOutput()
		// curl exits 7 when it cannot connect (root's curl gets an
		// answer).
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
			t.Errorf("UID %d on the xDS socket: %v, want curl unable to connect\n%s", appUID, err, out)
		}
		listening, _ := w.pod.Run("ss", "-Hltnp")
		for _, l := range strings.Split(strings.TrimSpace(listening), "\n") {
			if strings.Contains(l, "\"shunt\"") && !strings.Contains(l, ":15053 ") && !strings.Contains(l, adminAddr+" ") {
				t.Errorf("shunt listens on TCP beyond DNS and the admin endpoint: %s", l)
			}
		}
	})
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
		if !strings.Contains(w.proxy.Output(), "orig=10.1.0.2:80 chain=outbound:passthrough cluster=outbound:passthrough upstream=10.1.0.2:80") {
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

// The page's ZoneEgress example, the way Kuma does it: passthrough off,
// zone egress on, mesh mTLS with the builtin CA. The sidecar double reaches
// the egress double (another process, another namespace) over mTLS with an
// SNI naming the service and mesh; the egress matches the SNI to a filter
// chain and either originates the ExternalService's TLS (httpbin) or relays
// the application's own (example, kuma.io/protocol: tcp).
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
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: ZoneEgress
name: zoneegress-1
zone: zone-1
networking:
  address: %s
  port: %d
`, egressIP, egressPort))
	w.writeResource("services.yaml", externalService("example", "example", "tcp", "example.com:443", "  tls:\n    enabled: false\n")+
		externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
	// A control plane both proxies' nodes use: the agent's over loopback,
	// the egress's over its link to the pod (that port is not captured as
	// inbound traffic). Plain gRPC off loopback: only the test's egress
	// namespace is on that link.
	w.cp = w.pod.Start(w.pod.Command(context.Background(), bins.shunt, "controlplane", "--resources", w.resources,
		"--listen", "0.0.0.0:15680", "--allow-unauthenticated", "--state-dir", t.TempDir()))
	waitFor(t, "the control plane to listen", func() bool {
		out, _ := w.pod.Run("ss", "-Hltn")
		return strings.Contains(out, ":15680 ")
	}, w.cp.Output)
	w.startAgent(xdsAddr, "--zone", "zone-1", "--exclude-inbound-ports", "15680")
	w.startEgress()
	w.startProxy("zone-1")
	egressAt := fmt.Sprintf("%s:%d", egressIP, egressPort)

	t.Run("tcp service: the application's TLS through the egress", func(t *testing.T) {
		got, err := w.curl(appUID, "--cacert", w.dir+"/nginx/ca.crt", "https://example.com/")
		if err != nil || got != "httpbin sni=example.com client=" {
			t.Fatalf("curl https://example.com/ = %q, %v\n%s", got, err, w.logs())
		}
		if !strings.Contains(w.proxy.Output(), "cluster=external:example upstream="+egressAt+" tls=sni:example{mesh=default} verified=default peer=spiffe://default/zone-egress") {
			t.Errorf("the sidecar did not reach the egress over mesh mTLS:\n%s", w.proxy.Output())
		}
		if !strings.Contains(w.egressFwd.Output(), "sni=example{mesh=default} chain=example{mesh=default} peer=spiffe://default/pod cluster=external:default:example upstream=10.1.0.2:443 tls=none") {
			t.Errorf("the egress did not match the SNI and relay plainly:\n%s", w.egressFwd.Output())
		}
	})
	t.Run("TLS originated by the egress", func(t *testing.T) {
		got, err := w.curl(appUID, "http://httpbin.mesh/")
		if err != nil || got != "httpbin sni=httpbin.org client=" {
			t.Fatalf("curl http://httpbin.mesh/ = %q, %v\n%s", got, err, w.logs())
		}
		if !strings.Contains(w.proxy.Output(), "cluster=external:httpbin upstream="+egressAt+" tls=sni:httpbin{mesh=default}") {
			t.Errorf("the sidecar did not send httpbin to the egress:\n%s", w.proxy.Output())
		}
		if !strings.Contains(w.egressFwd.Output(), "chain=httpbin{mesh=default} peer=spiffe://default/pod cluster=external:default:httpbin upstream=10.1.0.2:443 tls=sni:httpbin.org verified=shunt test CA") {
			t.Errorf("the egress did not originate httpbin.org's TLS:\n%s", w.egressFwd.Output())
		}
	})
	t.Run("a client without a mesh certificate is refused", func(t *testing.T) {
		testenv.RequireBinary(t, "openssl")
		bad := w.wrongCA.issue(t, "intruder", true)
		w.egressHandshake("example{mesh=default}", nil)
		w.egressHandshake("example{mesh=default}", &bad)
		waitFor(t, "the egress to log the refusals", func() bool {
			return strings.Count(w.egressFwd.Output(), "chain=example{mesh=default} refused: TLS handshake") >= 2
		}, w.egressFwd.Output)
	})
	t.Run("a wrong SNI matches no filter chain", func(t *testing.T) {
		w.egressHandshake("nosuch{mesh=default}", nil)
		waitFor(t, "the egress to log the refusal", func() bool {
			return strings.Contains(w.egressFwd.Output(), "sni=nosuch{mesh=default} refused: no filter chain matches")
		}, w.egressFwd.Output)
	})
	t.Run("the internet is out of reach from the pod", func(t *testing.T) {
		for _, uid := range []int{appUID, proxyUID} {
			start := time.Now()
			if got, err := w.curl(uid, "--cacert", w.dir+"/nginx/ca.crt", "--resolve", "example.com:443:"+internetIP, "https://example.com/"); err == nil {
				t.Errorf("uid %d reached the internet directly: %q", uid, got)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("uid %d: refusal took %v, want it immediate", uid, took)
			}
		}
	})
}

// egressHandshake speaks TLS to the egress from the pod with openssl, as
// the proxy's user (not captured, and allowed to reach the egress), with
// the given SNI and, when set, client certificate.
func (w *world) egressHandshake(sni string, client *pair) {
	w.t.Helper()
	args := []string{"s_client", "-connect", fmt.Sprintf("%s:%d", egressIP, egressPort), "-servername", sni, "-brief"}
	if client != nil {
		crt, key := filepath.Join(w.dir, "intruder.crt"), filepath.Join(w.dir, "intruder.key")
		must(w.t, os.WriteFile(crt, client.cert, 0o644))
		must(w.t, os.WriteFile(key, client.key, 0o644))
		args = append(args, "-cert", crt, "-key", key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := w.pod.CommandAs(ctx, proxyUID, proxyUID, "openssl", args...)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
	out, _ := cmd.CombinedOutput()
	if strings.Contains(string(out), "httpbin sni=") {
		w.t.Errorf("SNI %q: the egress relayed the request:\n%s", sni, out)
	}
}

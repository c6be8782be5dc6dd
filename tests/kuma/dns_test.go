package kuma_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/kumacp"
	"github.com/shunt-dev/shunt/tests/peers"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// normalise spells addresses one way (kuma-cp writes ::ffff:f000:1, dig
// ::ffff:240.0.0.1) and splits them by family as A and AAAA answer them.
func byFamily(ips []string) (a, aaaa []string) {
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		if ip.Is4() {
			a = append(a, ip.String())
		} else {
			aaaa = append(aaaa, ip.String())
		}
	}
	slices.Sort(a)
	slices.Sort(aaaa)
	return a, aaaa
}

// resolvesAsKuma reports whether every name resolves in the pod, A and
// AAAA, to exactly the VIPs kuma-cp's API says it gave dataplane dp.
func (w *world) resolvesAsKuma(dp string, names ...string) (bool, string) {
	vips := w.vips(dp)
	for _, n := range names {
		wantA, wantAAAA := byFamily(vips[n])
		if len(wantA) == 0 || len(wantAAAA) == 0 {
			return false, n + ": kuma-cp has no VIP for it yet"
		}
		gotA, _ := byFamily(w.Dig("A", n))
		_, gotAAAA := byFamily(w.Dig("AAAA", n))
		if !slices.Equal(gotA, wantA) || !slices.Equal(gotAAAA, wantAAAA) {
			return false, n + ": A " + strings.Join(gotA, ",") + " AAAA " + strings.Join(gotAAAA, ",") +
				", kuma-cp's VIPs " + strings.Join(append(wantA, wantAAAA...), ",")
		}
	}
	return true, ""
}

// waitResolves waits until the names resolve as kuma-cp says, for at most
// d, and returns when the successful check began: the names resolved
// then already.
func (w *world) waitResolves(t *testing.T, d time.Duration, dp string, names ...string) time.Time {
	t.Helper()
	var why string
	deadline := time.Now().Add(d)
	for {
		began := time.Now()
		if began.After(deadline) {
			t.Fatalf("after %v: %s", d, why)
		}
		var ok bool
		if ok, why = w.resolvesAsKuma(dp, names...); ok {
			return began
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The seed's setup against the real kuma-cp, shunt subscribing alone:
// names and VIPs, live changes, passthrough and a control plane restart.
func TestKumaCP(t *testing.T) {
	w := newWorld(t, kumacp.Options{})
	w.cp.Put("/meshes/default", seedMesh(true))
	w.cp.Put("/meshes/default/external-services/httpbin", externalService("httpbin", "httpbin.org:443"))
	// The default: feature-embedded-dns, the table as JSON on
	// _kuma:dynamicconfig.
	w.startShunt("dp-1")
	// kuma-cp allocates VIPs in the background: the first ones may take a
	// few seconds after the ExternalService.
	w.waitResolves(t, 20*time.Second, "dp-1", "httpbin.mesh", "httpbin.org")

	t.Run("new ExternalService resolves within 2s, deleted stops", func(t *testing.T) {
		start := time.Now()
		w.cp.Put("/meshes/default/external-services/example", externalService("example", "example.com:443"))
		// kuma-cp allocates the VIP on its own schedule (its xDS refresh
		// interval); from then on the name is shunt's to answer.
		peers.WaitFor(t, 20*time.Second, "kuma-cp to allocate example.com a VIP", func() bool { return len(w.vips("dp-1")["example.com"]) > 0 })
		allocated := time.Now()
		answered := w.waitResolves(t, 2*time.Second, "dp-1", "example.mesh", "example.com")
		t.Logf("example.com: VIP allocated %v after the PUT, answered %v after that",
			allocated.Sub(start).Round(time.Millisecond), answered.Sub(allocated).Round(time.Millisecond))
		vip, _ := byFamily(w.vips("dp-1")["example.com"])
		w.cp.Delete("/meshes/default/external-services/example")
		peers.WaitFor(t, 5*time.Second, "example.com to stop resolving to its VIP", func() bool {
			got, _ := byFamily(w.Dig("A", "example.com"))
			return !slices.Contains(got, vip[0])
		})
	})

	t.Run("mesh passthrough off locks egress down, on lifts it", func(t *testing.T) {
		// The proxy's user is never captured: only the lockdown refuses it.
		if !w.connects(proxyUID, otherIP+":80") {
			t.Fatal("passthrough on, yet the internet is unreachable")
		}
		w.cp.Put("/meshes/default", seedMesh(false))
		peers.WaitFor(t, 10*time.Second, "lockdown to refuse a direct connection", func() bool { return !w.connects(proxyUID, otherIP+":80") })
		w.cp.Put("/meshes/default", seedMesh(true))
		peers.WaitFor(t, 10*time.Second, "lockdown to lift", func() bool { return w.connects(proxyUID, otherIP+":80") })
	})

	t.Run("kuma-cp restart: DNS answers during the outage, new VIPs after", func(t *testing.T) {
		before, _ := byFamily(w.vips("dp-1")["httpbin.org"])
		w.cp.Stop()
		for i := 0; i < 3; i++ {
			if got, _ := byFamily(w.Dig("A", "httpbin.org")); !slices.Equal(got, before) {
				t.Fatalf("kuma-cp down: httpbin.org A = %v, want the last VIP %v", got, before)
			}
			time.Sleep(300 * time.Millisecond)
		}
		w.cp.Start()
		// The memory store starts empty: the resources come again, in
		// another order and with one more, so the VIPs move.
		w.cp.Put("/meshes/default", seedMesh(true))
		w.cp.Put("/meshes/default/external-services/aaa", externalService("aaa", "aaa.example:443"))
		w.cp.Put("/meshes/default/external-services/httpbin", externalService("httpbin", "httpbin.org:443"))
		peers.WaitFor(t, 30*time.Second, "kuma-cp to allocate VIPs again", func() bool {
			return len(w.vips("dp-1")["httpbin.org"]) > 0 && len(w.vips("dp-1")["aaa.example"]) > 0
		})
		w.waitResolves(t, 10*time.Second, "dp-1", "httpbin.mesh", "httpbin.org", "aaa.example")
		after, _ := byFamily(w.vips("dp-1")["httpbin.org"])
		t.Logf("httpbin.org VIP %v before the restart, %v after", before, after)
		if strings.Contains(w.cp.Log(), "already an active stream") {
			t.Error("kuma-cp refused a second stream for the node")
		}
	})

	t.Run("without feature-embedded-dns: the dns_filter table", func(t *testing.T) {
		w.StopShunt()
		w.startShunt("dp-2", "--xds-node-metadata", "features:=[]")
		w.waitResolves(t, 20*time.Second, "dp-2", "httpbin.mesh", "httpbin.org")
	})
}

// The Dataplane's Envoy (the Envoy double) started by shunt connects to
// shunt's xDS socket, and shunt holds the node's one stream to kuma-cp:
// kuma-cp sees one stream, refuses none, and both shunt and the proxy get
// their configuration.
func TestKumaCPEnvoyBehindShunt(t *testing.T) {
	w := newWorld(t, kumacp.Options{})
	w.cp.Put("/meshes/default", seedMesh(true))
	w.cp.Put("/meshes/default/external-services/httpbin", externalService("httpbin", "httpbin.org:443"))
	w.startShunt("dp-1", "--envoy-binary", fakeEnvoy, "--envoy-admin", "127.0.0.1:0", "--proxy-uid", "5678")
	w.waitResolves(t, 20*time.Second, "dp-1", "httpbin.mesh", "httpbin.org")
	// The proxy got its configuration through shunt: its admin /ready is
	// LIVE once it has clusters and listeners, which shunt's readiness
	// includes.
	if code, body := w.Admin("/readyz"); code != "200" {
		t.Fatalf("/readyz = %s %s", code, body)
	}
	time.Sleep(2 * time.Second) // a refused or second stream would show by now
	log := w.cp.Log()
	if strings.Contains(log, "already an active stream") || strings.Contains(w.Agent.Output(), "already an active stream") {
		t.Errorf("kuma-cp refused a second stream for the node")
	}
	if c := strings.Count(log, "proxy connected"); c != 1 {
		t.Errorf("kuma-cp saw %d streams connect, want 1", c)
	}
}

// Dataplane tokens: kuma-cp with dpToken authentication takes the token
// from POST /tokens/dataplane, sent raw; without one shunt says why.
func TestKumaCPDataplaneToken(t *testing.T) {
	w := newWorld(t, kumacp.Options{DPToken: true})
	w.cp.Put("/meshes/default", seedMesh(true))
	w.cp.Put("/meshes/default/external-services/httpbin", externalService("httpbin", "httpbin.org:443"))

	dp := filepath.Join(w.Dir, "dp-1.yaml")
	if err := os.WriteFile(dp, []byte(strings.ReplaceAll(dataplaneYAML, "%s", "dp-1")), 0o644); err != nil {
		t.Fatal(err)
	}
	w.Agent = w.Pod.Start(w.Pod.Command(t.Context(), shuntBin, "run", "--xds", kumacp.XDSAddr, "--xds-ca", w.cp.CAFile(),
		"--dataplane-file", dp, "--state-dir", filepath.Join(w.Dir, "state-none"), "--admin", adminAddr))
	const want = "no token is configured (give the dataplane token with --xds-token-file)"
	peers.WaitFor(t, 20*time.Second, "shunt to say that kuma-cp wants a token", func() bool {
		return strings.Contains(w.Agent.Output(), want)
	})
	if code, body := w.Admin("/readyz"); code == "200" {
		t.Errorf("ready without a token: %s", body)
	}
	w.StopShunt()

	token := filepath.Join(w.Dir, "token")
	if err := os.WriteFile(token, []byte(w.cp.DataplaneToken("default", "dp-1")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.startShunt("dp-1", "--xds-token-file", token)
	w.waitResolves(t, 20*time.Second, "dp-1", "httpbin.mesh", "httpbin.org")
}

// kuma-dp's DNS server holds the port shunt's interceptor uses by default:
// shunt refuses to start and says why, rather than sharing the port.
func TestKumaDPDNSPortClash(t *testing.T) {
	testenv.RequireRoot(t)
	socat := testenv.RequireBinary(t, "socat")
	pod := testenv.NewNetns(t, "kclash")
	pod.WriteResolvConf("nameserver 192.0.2.53\n")
	dir := testenv.ReadableTempDir(t)
	// A stand-in holding the port under kuma-dp's process name, which is
	// all shunt reads of it.
	kumaDP := filepath.Join(dir, "kuma-dp")
	b, err := os.ReadFile(socat)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kumaDP, b, 0o755); err != nil {
		t.Fatal(err)
	}
	holder := pod.Start(pod.Command(t.Context(), kumaDP, "UDP-RECVFROM:15053,bind=127.0.0.1,fork", "/dev/null"))
	peers.WaitFor(t, 5*time.Second, "the stand-in to bind 15053", func() bool {
		out, _ := pod.Run("ss", "-Hlun")
		return strings.Contains(out, ":15053 ")
	})
	dp := filepath.Join(dir, "dp.yaml")
	if err := os.WriteFile(dp, []byte(strings.ReplaceAll(dataplaneYAML, "%s", "dp-1")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := pod.Run(shuntBin, "run", "--xds", "127.0.0.1:5678", "--dataplane-file", dp, "--state-dir", filepath.Join(dir, "state"), "--admin", "off")
	if err == nil {
		t.Fatalf("shunt started beside kuma-dp's DNS:\n%s", out)
	}
	if !strings.Contains(out, "DNS port 15053 is held by") || !strings.Contains(out, "(kuma-dp)") || !strings.Contains(out, "shunt replaces kuma-dp's DNS server") {
		t.Errorf("error does not say who holds the port and why it matters:\n%s", out)
	}
	if holder.Exited() {
		t.Errorf("the port's holder exited: %s", holder.Output())
	}
}

package kuma_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
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

const (
	proxyUID = 5678
	appUID   = 1000
	// internetIP is the internet's address on the pod's link, also its
	// resolver; otherIP is an address that no mesh name stands for.
	internetIP = "10.1.0.2"
	otherIP    = "10.1.0.3"
	adminAddr  = "127.0.0.1:15090"
)

// world is kuma-cp, a pod where shunt runs, and an internet.
type world struct {
	t        *testing.T
	cp       *kumacp.CP
	pod      *testenv.Netns
	internet *testenv.Netns
	dir      string
	agent    *testenv.Process
}

func newWorld(t *testing.T, opts kumacp.Options) *world {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "dig")
	w := &world{t: t, dir: testenv.ReadableTempDir(t)}
	w.cp = kumacp.Start(t, opts)
	w.pod = testenv.NewNetns(t, "kpod")
	w.internet = testenv.NewNetns(t, "kinet")
	podI, inetP := testenv.Link(t, w.pod, w.internet, 1)
	testenv.AddDefaultRoute(t, podI, inetP)
	w.internet.MustRun("ip", "addr", "add", otherIP+"/24", "dev", inetP.Dev)
	testenv.ServeHTTP(t, w.internet, "0.0.0.0:80", "internet\n")
	w.pod.WriteResolvConf("nameserver " + internetIP + "\n")
	peers.Relay(t, w.pod, kumacp.XDSAddr, w.cp.Dial)
	t.Cleanup(func() {
		if t.Failed() && w.agent != nil {
			t.Logf("shunt output:\n%s", w.agent.Output())
		}
	})
	return w
}

// startShunt runs `shunt run` against kuma-cp as the Dataplane name.
func (w *world) startShunt(name string, extra ...string) {
	w.t.Helper()
	dp := filepath.Join(w.dir, name+".yaml")
	if err := os.WriteFile(dp, fmt.Appendf(nil, dataplaneYAML, name), 0o644); err != nil {
		w.t.Fatal(err)
	}
	args := append([]string{"run", "--xds", kumacp.XDSAddr, "--xds-ca", w.cp.CAFile(), "--dataplane-file", dp,
		"--state-dir", filepath.Join(w.dir, "state-"+name), "--admin", adminAddr, "--reconcile-interval", "500ms"}, extra...)
	w.agent = w.pod.Start(w.pod.Command(context.Background(), shuntBin, args...))
	waitFor(w.t, 30*time.Second, "shunt to be ready", func() bool {
		code, _ := w.admin("/readyz")
		return code == "200"
	})
}

func (w *world) stopShunt() {
	if w.agent != nil {
		w.agent.Stop()
	}
}

// admin GETs an admin path inside the pod.
func (w *world) admin(path string) (string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	out, _ := w.pod.Command(ctx, "curl", "-s", "-w", "\n%{http_code}", "http://"+adminAddr+path).Output()
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndex(s, "\n")
	if i < 0 {
		return s, ""
	}
	return s[i+1:], s[:i]
}

// dig resolves name as the application does: through the pod's
// resolv.conf, which capture sends to shunt.
func (w *world) dig(qtype, name string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := w.pod.CommandAs(ctx, appUID, appUID, "dig", "+short", "+tries=1", "+time=1", qtype, name).Output()
	var ips []string
	for _, l := range strings.Fields(string(out)) {
		if net.ParseIP(l) != nil {
			ips = append(ips, l)
		}
	}
	slices.Sort(ips)
	return ips
}

// vips reads, from kuma-cp's API, the VIPs it gives the dataplane name:
// the addresses of the DNS table in the xDS it generated for it.
func (w *world) vips(name string) map[string][]string {
	w.t.Helper()
	var dump struct {
		XDS json.RawMessage `json:"xds"`
	}
	if err := w.cp.Get("/meshes/default/dataplanes/"+name+"/_config", &dump); err != nil {
		// Not connected (yet): kuma-cp generates nothing for it.
		return nil
	}
	return kumacp.DNSRecords(dump.XDS)
}

// connects reports whether uid in the pod can open a TCP connection to
// addr.
func (w *world) connects(uid int, addr string) bool {
	host, port, _ := strings.Cut(addr, ":")
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s 2>/dev/null && echo connected`, host, port)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := w.pod.CommandAs(ctx, uid, uid, "bash", "-c", script).CombinedOutput()
	return strings.Contains(string(out), "connected")
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

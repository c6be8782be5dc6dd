package istio_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/istiod"
	"github.com/shunt-dev/shunt/tests/peers"
	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	appUID = 1000
	// internetIP is the internet's address on the pod's link, also the
	// pod's resolver.
	internetIP = "10.1.0.2"
	podIP      = "10.1.0.1"
	adminAddr  = "127.0.0.1:15090"
)

// world is istiod, a pod where shunt runs, and an internet.
type world struct {
	t        *testing.T
	cp       *istiod.CP
	pod      *testenv.Netns
	internet *testenv.Netns
	dir      string
	agent    *testenv.Process
}

func newWorld(t *testing.T) *world {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "dig")
	w := &world{t: t, dir: testenv.ReadableTempDir(t)}
	w.cp = istiod.Start(t)
	w.pod = testenv.NewNetns(t, "ipod")
	w.internet = testenv.NewNetns(t, "iinet")
	podI, inetP := testenv.Link(t, w.pod, w.internet, 1)
	testenv.AddDefaultRoute(t, podI, inetP)
	w.pod.WriteResolvConf("nameserver " + internetIP + "\n")
	peers.Relay(t, w.pod, istiod.XDSAddr, w.cp.Dial)
	t.Cleanup(func() {
		if t.Failed() && w.agent != nil {
			t.Logf("shunt output:\n%s", w.agent.Output())
		}
	})
	return w
}

// startShunt runs `shunt run` against istiod as the sidecar of pod, the
// flavour detected from the node id.
func (w *world) startShunt(pod string, extra ...string) {
	w.t.Helper()
	args := append([]string{"run", "--xds", istiod.XDSAddr, "--node-id", istiod.NodeID(podIP, pod),
		"--state-dir", filepath.Join(w.dir, "state-"+pod), "--admin", adminAddr, "--reconcile-interval", "500ms"}, extra...)
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

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

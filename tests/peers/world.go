package peers

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// AdminAddr is shunt's admin endpoint inside the pod.
const AdminAddr = "127.0.0.1:15090"

// AppUID is the application's user in the pod.
const AppUID = 1000

// Dialer reaches a peer's ports inside its namespace.
type Dialer interface {
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

// World is a pod where shunt runs against a peer, and an internet: the
// pod's default route and its resolver. The peer's xDS port is relayed
// into the pod at the same address.
type World struct {
	T             *testing.T
	Pod, Internet *testenv.Netns
	// InternetEnd is the internet's end of the pod's link.
	InternetEnd testenv.Host
	// Dir is readable by every user (a proxy under its own UID).
	Dir string
	// Agent is the shunt StartShunt started.
	Agent *testenv.Process
}

// NewWorld builds the world around the peer that start runs. start runs
// after the checks that skip and before the namespaces are made, so that a
// test skips for the first thing missing. prefix (one letter) tells the
// suites' namespaces apart.
func NewWorld(t *testing.T, prefix, xdsAddr string, start func() Dialer) *World {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "dig")
	w := &World{T: t, Dir: testenv.ReadableTempDir(t)}
	peer := start()
	w.Pod = testenv.NewNetns(t, prefix+"pod")
	w.Internet = testenv.NewNetns(t, prefix+"inet")
	podEnd, inetEnd := testenv.Link(t, w.Pod, w.Internet, 1)
	testenv.AddDefaultRoute(t, podEnd, inetEnd)
	w.InternetEnd = inetEnd
	w.Pod.WriteResolvConf("nameserver " + inetEnd.IPv4.String() + "\n")
	Relay(t, w.Pod, xdsAddr, peer.Dial)
	t.Cleanup(func() {
		if t.Failed() && w.Agent != nil {
			t.Logf("shunt output:\n%s", w.Agent.Output())
		}
	})
	return w
}

// StartShunt runs bin (shunt) with args in the pod and waits until its
// admin endpoint says it is ready.
func (w *World) StartShunt(bin string, args ...string) {
	w.T.Helper()
	w.Agent = w.Pod.Start(w.Pod.Command(context.Background(), bin, args...))
	WaitFor(w.T, 30*time.Second, "shunt to be ready", func() bool {
		code, _ := w.Admin("/readyz")
		return code == "200"
	})
}

// StopShunt stops the shunt StartShunt started.
func (w *World) StopShunt() {
	if w.Agent != nil {
		w.Agent.Stop()
	}
}

// Admin GETs an admin path inside the pod: the status code and the body.
func (w *World) Admin(path string) (string, string) {
	return w.Pod.GetHTTP(AdminAddr, path)
}

// Dig resolves name as the application does: through the pod's
// resolv.conf, which capture sends to shunt.
func (w *World) Dig(qtype, name string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := w.Pod.CommandAs(ctx, AppUID, AppUID, "dig", "+short", "+tries=1", "+time=1", qtype, name).Output()
	var ips []string
	for _, l := range strings.Fields(string(out)) {
		if net.ParseIP(l) != nil {
			ips = append(ips, l)
		}
	}
	slices.Sort(ips)
	return ips
}

// WaitFor polls ok until it holds, and fails the test after d.
func WaitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package istio_test

import (
	"path/filepath"
	"testing"

	"github.com/shunt-dev/shunt/tests/istiod"
	"github.com/shunt-dev/shunt/tests/peers"
)

const (
	podIP     = "10.1.0.1"
	adminAddr = peers.AdminAddr
)

// world is istiod, a pod where shunt runs, and an internet.
type world struct {
	*peers.World
	cp *istiod.CP
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{}
	w.World = peers.NewWorld(t, "i", istiod.XDSAddr, func() peers.Dialer {
		t.Helper()
		w.cp = istiod.Start(t)
		return w.cp
	})
	return w
}

// startShunt runs `shunt run` against istiod as the sidecar of pod, the
// flavour detected from the node id.
func (w *world) startShunt(pod string, extra ...string) {
	w.T.Helper()
	args := append([]string{"run", "--xds", istiod.XDSAddr, "--node-id", istiod.NodeID(podIP, pod),
		"--state-dir", filepath.Join(w.Dir, "state-"+pod), "--admin", adminAddr, "--reconcile-interval", "500ms"}, extra...)
	w.StartShunt(shuntBin, args...)
}

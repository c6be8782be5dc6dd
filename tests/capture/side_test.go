package capture_test

import (
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// newSideHost joins another host to the pod on a second link (10.2.0.0/24,
// fd00:2::/64) and records the pod's device name in w.sideDev.
func newSideHost(t *testing.T, w *world) *testenv.Netns {
	t.Helper()
	side := testenv.NewNetns(t, "side")
	podEnd, _ := testenv.Link(t, w.pod, side, 2)
	w.sideDev = podEnd.Dev
	return side
}

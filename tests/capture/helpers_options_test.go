package capture_test

import (
	"fmt"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// serveApp answers HTTP in the pod on each port with "app:PORT".
func serveApp(t *testing.T, w *world, ports ...int) {
	t.Helper()
	for _, p := range ports {
		testenv.ServeHTTP(t, w.pod, fmt.Sprintf("[::]:%d", p), fmt.Sprintf("app:%d", p))
	}
}

package dns_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestHeldPortIsNamed: another user's process holds the interceptor's port;
// shunt dns refuses to start and says which process and user hold it.
func TestHeldPortIsNamed(t *testing.T) {
	testenv.RequireRoot(t)
	bin := shuntBinary(t)
	pod := testenv.NewNetns(t, "held")
	pod.MustRun("ip", "link", "set", "lo", "up")
	squat := pod.Start(pod.CommandAs(context.Background(), 1000, 1000, bin, "dns", "--listen", "127.0.0.1:15053", "--upstream", "127.0.0.1:53", "--upstream-mark", "0"))
	testenv.WaitListening(t, pod, squat.Output, "127.0.0.1:15053")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := pod.Command(ctx, bin, "dns", "--listen", "127.0.0.1:15053", "--upstream", "127.0.0.1:53").CombinedOutput()
	if err == nil {
		t.Fatalf("shunt dns started on a held port:\n%s", out)
	}
	want := fmt.Sprintf("held by pid %d (shunt), uid 1000", squat.Cmd.Process.Pid)
	if !strings.Contains(string(out), want) {
		t.Errorf("error does not name the holder (%q):\n%s", want, out)
	}
}

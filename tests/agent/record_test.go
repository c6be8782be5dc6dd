package agent_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestStatusAndUninstallAfterRun: whatever the engine `shunt run`
// installed with, a later status and uninstall given nothing but the state
// directory find it from the record the engine keeps.
func TestStatusAndUninstallAfterRun(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		w := newWorldWith(t, engine)
		w.startAgent("")
		shunt := func(args ...string) (string, int) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			args = append(args, "--state-dir", w.stateDir)
			var cmd *exec.Cmd
			if engine == "ebpf" {
				cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + w.pod.Path(), bins.shunt}, args...)...)
			} else {
				cmd = w.pod.Command(ctx, bins.shunt, args...)
			}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return string(out), ee.ExitCode()
			} else if err != nil {
				t.Fatalf("shunt %v: %v", args, err)
			}
			return string(out), 0
		}
		waitFor(t, "the capture to be recorded", func() bool {
			_, code := shunt("status")
			return code == 0
		}, w.logs)
		w.stopAgent()
		out, code := shunt("status")
		if code != 0 || !strings.Contains(out, "engine:  "+engine) {
			t.Errorf("status after run (exit %d) does not name the %s engine:\n%s", code, engine, out)
		}
		if out, code := shunt("uninstall"); code != 0 {
			t.Fatalf("uninstall after run: exit %d\n%s", code, out)
		}
		if out, code := shunt("status"); code != 4 {
			t.Errorf("status after uninstall: exit %d, want 4 (not installed)\n%s", code, out)
		}
	})
}

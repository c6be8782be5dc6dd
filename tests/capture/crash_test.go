package capture_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKilledInstallLeavesARecognisedState kills shunt install with SIGKILL
// at random points of its run, a hundred times, and checks each time that
// status reports what the namespace holds (never "installed and matching"
// while other shunt rules capture too, never "not installed" while shunt's
// rules are live), that install then converges to one ruleset in one
// backend, and that uninstall gives back iptables-save exactly as it was.
func TestKilledInstallLeavesARecognisedState(t *testing.T) {
	if testing.Short() {
		t.Skip("a hundred installs: not in -short")
	}
	w := newWorld(t, "nft")
	testenv := "iptables-legacy-restore"
	if _, err := exec.LookPath(testenv); err != nil {
		t.Skipf("%s not found: the backend switch needs both variants", testenv)
	}
	foreignRules(t, w)
	saves := func() string {
		var all []string
		for _, prog := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
			all = append(all, prog+":\n"+normalizeSave(w.pod.MustRun(prog)))
		}
		return strings.Join(all, "\n")
	}
	shuntIn := func(backend string) []string {
		var out []string
		for _, prog := range []string{"iptables-" + backend + "-save", "ip6tables-" + backend + "-save"} {
			if s := w.pod.MustRun(prog); strings.Contains(s, ":SHUNT_") {
				out = append(out, prog)
			}
		}
		return out
	}
	before := saves()
	planA := []string{"--outbound-port", "15001"}
	planB := []string{"--outbound-port", "16001", "--exclude-outbound-ports", "22", "--redirect-all-dns"}
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		full := append([]string{args[0], "--netns", w.pod.Path(), "--state-dir", w.stateDir}, args[1:]...)
		out, err := exec.CommandContext(ctx, bins.shunt, full...).CombinedOutput()
		return string(out), err
	}
	mustRun := func(args ...string) {
		t.Helper()
		if out, err := run(args...); err != nil {
			t.Fatalf("shunt %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { _, _ = run("uninstall") })

	// How long a whole install takes here bounds the random delays.
	start := time.Now()
	mustRun(append([]string{"install", "--iptables-backend", "legacy"}, planA...)...)
	full := time.Since(start)
	mustRun("uninstall")
	t.Logf("a whole install takes %v", full)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	const runs = 100
	hit := map[string]int{}
	for i := 0; i < runs; i++ {
		// Four starting points: nothing installed; plan A in the other
		// backend (the killed install switches backend); plan A in the
		// same backend; and a finished install of the same plan.
		scenario := i % 4
		switch scenario {
		case 1:
			mustRun(append([]string{"install", "--iptables-backend", "legacy"}, planA...)...)
		case 2:
			mustRun(append([]string{"install", "--iptables-backend", "nft"}, planA...)...)
		case 3:
			mustRun(append([]string{"install", "--iptables-backend", "nft"}, planB...)...)
		}
		delay := time.Duration(rng.Int64N(int64(full) * 6 / 5))
		cmd := exec.Command(bins.shunt, append([]string{"install", "--netns", w.pod.Path(), "--state-dir", w.stateDir, "--iptables-backend", "nft"}, planB...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		killed := err != nil
		// iptables-restore children outlive shunt; wait until they end
		// (their input is cut short, so they commit nothing more).
		for syscall.Kill(-cmd.Process.Pid, 0) == nil {
			time.Sleep(2 * time.Millisecond)
		}

		out, serr := run("status", "-o", "json")
		code := exitCode(serr)
		var st struct {
			Installed bool     `json:"installed"`
			Backend   string   `json:"backend"`
			Drift     []string `json:"drift"`
		}
		if code != 0 && code != 3 && code != 4 || json.Unmarshal([]byte(jsonPart(out)), &st) != nil {
			t.Fatalf("run %d (scenario %d, killed after %v): status failed (exit %d):\n%s", i, scenario, delay, code, out)
		}
		live := append(shuntIn("nft"), shuntIn("legacy")...)
		switch {
		case code == 4 && len(live) > 0:
			t.Errorf("run %d (scenario %d, killed after %v): status says not installed, but shunt rules are live in %v", i, scenario, delay, live)
		case code == 0 && len(live) != len(shuntIn(st.Backend)):
			t.Errorf("run %d (scenario %d, killed after %v): status says %s is installed and matching, but shunt rules are live in %v", i, scenario, delay, st.Backend, live)
		}
		switch {
		case !killed:
			hit["finished"]++
		case code == 3:
			hit["interrupted, reported"]++
		default:
			hit["killed, nothing to report"]++
		}

		if i%2 == 0 {
			// Install again (backend auto): one ruleset in one backend.
			mustRun(append([]string{"install"}, planB...)...)
			if out, err := run("status"); err != nil {
				t.Errorf("run %d (scenario %d, killed after %v): status after a new install: %v\n%s", i, scenario, delay, err, out)
			}
			if n, l := len(shuntIn("nft")), len(shuntIn("legacy")); n > 0 && l > 0 {
				t.Errorf("run %d (scenario %d, killed after %v): after a new install shunt rules are in both backends", i, scenario, delay)
			}
		}
		if out, err := run("uninstall"); err != nil {
			t.Fatalf("run %d: uninstall: %v\n%s", i, err, out)
		}
		if after := saves(); after != before {
			t.Fatalf("run %d (scenario %d, killed after %v): uninstall did not restore the ruleset:\nbefore:\n%s\nafter:\n%s", i, scenario, delay, before, after)
		}
		if _, err := os.Stat(w.stateDir + "/capture.json"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("run %d: uninstall left a record: %v", i, err)
		}
	}
	t.Logf("outcomes of %d killed installs: %v", runs, hit)
}

// jsonPart drops log lines printed before a JSON document.
func jsonPart(out string) string {
	if i := strings.Index(out, "{"); i >= 0 {
		return out[i:]
	}
	return out
}

// Package envoy_test runs `shunt run --envoy-binary` in a network namespace
// with tests/standin/fakeenvoy as the Envoy binary: the bootstrap shunt
// writes, the process it starts (user, namespace), its supervision
// (restart, drain) and what the admin endpoint says of it.
package envoy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/envoy/bootstrap"
	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	proxyUID  = 5678
	otherUID  = 1000
	adminAddr = "127.0.0.1:15090"
)

var shunt, fakeEnvoy string

func TestMain(m *testing.M) {
	os.Exit(testenv.BuildAndRun(m, "envoy",
		testenv.Program{Path: &shunt, Name: "shunt", Pkg: testenv.ShuntPackage},
		testenv.Program{Path: &fakeEnvoy, Name: "envoy", Pkg: "github.com/shunt-dev/shunt/tests/standin/fakeenvoy"}))
}

type world struct {
	t         *testing.T
	pod       *testenv.Netns
	dir       string
	stateDir  string
	resources string
	events    string
	agent     *testenv.Process
}

func newWorld(t *testing.T) *world {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "curl")
	testenv.RequireBinary(t, "setpriv")
	w := &world{t: t, pod: testenv.NewNetns(t, "envoy"), dir: testenv.ReadableTempDir(t)}
	w.stateDir = filepath.Join(w.dir, "state")
	w.resources = filepath.Join(w.dir, "resources")
	w.events = filepath.Join(w.dir, "events")
	for _, d := range []string{w.stateDir, w.resources} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(w.events, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(w.events, 0o666)
	if err := os.WriteFile(filepath.Join(w.resources, "httpbin.yaml"), []byte(`type: ExternalService
mesh: default
name: httpbin
tags:
  kuma.io/service: httpbin
  kuma.io/protocol: http
networking:
  address: httpbin.org:443
`), 0o644); err != nil {
		t.Fatal(err)
	}
	w.pod.WriteResolvConf("nameserver 192.0.2.53\n")
	return w
}

func (w *world) command(extra ...string) *exec.Cmd {
	args := append([]string{"run", "--no-capture", "--resources", w.resources, "--state-dir", w.stateDir,
		"--node-id", "pod", "--zone", "zone-1", "--admin", adminAddr, "--proxy-uid", strconv.Itoa(proxyUID),
		"--envoy-binary", fakeEnvoy, "--envoy-admin", "127.0.0.1:0", "--envoy-log-level", "debug", "--envoy-concurrency", "2",
		"--drain-timeout", "500ms"}, extra...)

	cmd := w.pod.Command(context.Background(), shunt, args...)
	cmd.Env = append(os.Environ(), "FAKEENVOY_EVENTS="+w.events)
	return cmd
}

func (w *world) admin(path string) (string, string) {
	return w.pod.GetHTTP(adminAddr, path)
}

func (w *world) waitFor(what string, f func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			out := ""
			if w.agent != nil {
				out = w.agent.Output()
			}
			w.t.Fatalf("timed out waiting for %s; shunt's log:\n%s", what, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pids are the proxy processes started, in order, from the double's events.
func (w *world) pids() []int {
	b, _ := os.ReadFile(w.events)
	var out []int
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[2] == "start" {
			pid, _ := strconv.Atoi(f[1])
			out = append(out, pid)
		}
	}
	return out
}

func (w *world) eventsOf(pid int) []string {
	b, _ := os.ReadFile(w.events)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, " ", 3)
		if len(f) == 3 && f[1] == strconv.Itoa(pid) && !strings.HasPrefix(f[2], "start ") {
			out = append(out, f[2])
		}
	}
	return out
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

func TestShuntRunsEnvoy(t *testing.T) {
	w := newWorld(t)
	w.agent = w.pod.Start(w.command())
	w.waitFor("/readyz", func() bool { code, _ := w.admin("/readyz"); return code == "200" })

	// The bootstrap: for this node and the control plane the agent
	// follows, readable by the proxy's user and root only.
	path := filepath.Join(w.stateDir, "envoy", "bootstrap.json")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o400 || sys.Uid != proxyUID {
		t.Errorf("bootstrap mode %04o owner %d, want 0400 and the proxy's user", st.Mode().Perm(), sys.Uid)
	}
	if out, err := exec.Command("setpriv", fmt.Sprintf("--reuid=%d", otherUID), fmt.Sprintf("--regid=%d", otherUID), "--clear-groups", "cat", path).CombinedOutput(); err == nil {
		t.Errorf("UID %d read the bootstrap:\n%s", otherUID, out)
	} else if !strings.Contains(string(out), "Permission denied") {
		t.Errorf("UID %d: %v: %s", otherUID, err, out)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if b.GetNode().GetId() != "pod" || b.GetNode().GetLocality().GetZone() != "zone-1" ||
		b.GetNode().GetMetadata().GetFields()["kuma.io/mesh"].GetStringValue() != "default" {
		t.Errorf("bootstrap node %v", b.GetNode())
	}
	ads := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
	// shunt's local xDS socket: shunt holds the node's one upstream stream.
	if got, want := ads.GetPipe().GetPath(), filepath.Join(w.stateDir, "xds.sock"); got != want {
		t.Errorf("ADS endpoint %v, want the socket %s", ads, want)
	}

	// The process: the proxy's user, no extra groups, in the pod's
	// namespace, with shunt's flags.
	pids := w.pids()
	if len(pids) != 1 {
		t.Fatalf("proxy pids %v, want one", pids)
	}
	pid := pids[0]
	s := procStatus(t, pid)
	if s["Uid"] != "5678 5678 5678 5678" || s["Gid"] != "5678 5678 5678 5678" || s["Groups"] != "" {
		t.Errorf("proxy runs as Uid %q Gid %q Groups %q", s["Uid"], s["Gid"], s["Groups"])
	}
	podNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", w.agent.Cmd.Process.Pid))
	proxyNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if podNS == "" || podNS != proxyNS {
		t.Errorf("proxy in netns %q, shunt in %q", proxyNS, podNS)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if args := strings.ReplaceAll(string(cmdline), "\x00", " "); !strings.Contains(args, "--log-level debug --concurrency 2") || !strings.Contains(args, "--config-path "+path) {
		t.Errorf("proxy command line %q", args)
	}

	_, metrics := w.admin("/metrics")
	for _, want := range []string{"shunt_proxy_up 1", "shunt_proxy_restarts_total 0", "shunt_agent_ready 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(w.agent.Output(), `msg="envoy: [`) {
		t.Errorf("the proxy's output is not in shunt's log:\n%s", w.agent.Output())
	}

	// A death (as by the OOM killer): logged with its status, restarted, live again.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	w.waitFor("a second proxy", func() bool { return len(w.pids()) == 2 })
	w.waitFor("/readyz after the restart", func() bool { code, _ := w.admin("/readyz"); return code == "200" })
	_, metrics = w.admin("/metrics")
	if !strings.Contains(metrics, "shunt_proxy_restarts_total 1") || !strings.Contains(metrics, "shunt_proxy_up 1") {
		t.Errorf("/metrics after a restart:\n%s", grep(metrics, "shunt_proxy_"))
	}
	if !strings.Contains(w.agent.Output(), "signal: killed") {
		t.Errorf("the exit status is not logged:\n%s", w.agent.Output())
	}

	// Shutdown: drain, then SIGTERM, and shunt exits cleanly.
	second := w.pids()[1]
	w.agent.Stop()
	if got, want := strings.Join(w.eventsOf(second), ", "), "ready, drain_listeners graceful=true, signal terminated, exit 0"; got != want {
		t.Errorf("proxy events %q, want %q\n%s", got, want, w.agent.Output())
	}
	if err := syscall.Kill(second, 0); err == nil {
		t.Errorf("proxy %d outlived shunt", second)
	}
	if code := w.agent.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("shunt exited %d:\n%s", code, w.agent.Output())
	}
}

func TestReadyzWaitsForTheProxy(t *testing.T) {
	w := newWorld(t)
	// Everything of the agent's own is in place, but the proxy dies at
	// once, every time: shunt is not ready, and says why.
	crash := filepath.Join(w.dir, "crash")
	if err := os.WriteFile(crash, []byte("1000"), 0o666); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(crash, 0o666)
	cmd := w.command()
	cmd.Env = append(cmd.Env, "FAKEENVOY_CRASH="+crash, "FAKEENVOY_CRASH_AFTER=0s")
	w.agent = w.pod.Start(cmd)
	w.waitFor("two restarts", func() bool { return len(w.pids()) >= 3 })
	code, body := w.admin("/readyz")
	if code != "503" || !strings.Contains(body, "proxy") {
		t.Errorf("/readyz with a crashing proxy: %s %q", code, body)
	}
	_, metrics := w.admin("/metrics")
	if !strings.Contains(metrics, "shunt_agent_ready 0") || strings.Contains(metrics, "shunt_proxy_restarts_total 0") {
		t.Errorf("/metrics with a crashing proxy:\n%s", grep(metrics, "shunt_proxy_"))
	}
	if !strings.Contains(w.agent.Output(), "exit status 3") {
		t.Errorf("exit status not logged:\n%s", w.agent.Output())
	}
}

func TestStateDirTheProxyCannotEnter(t *testing.T) {
	w := newWorld(t)
	if err := os.Chmod(w.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := w.command().CombinedOutput()
	if err == nil {
		t.Fatalf("shunt run started with a state directory the proxy cannot enter:\n%s", out)
	}
	if want := "the proxy user 5678 cannot enter " + w.stateDir + " (mode 0700"; !strings.Contains(string(out), want) {
		t.Errorf("error does not say %q:\n%s", want, out)
	}
	if len(w.pids()) != 0 {
		t.Errorf("a proxy was started")
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A shunt killed outright takes its Envoy with it, so that the next shunt
// finds the admin port and the socket free.
func TestEnvoyDiesWithShunt(t *testing.T) {
	w := newWorld(t)
	w.agent = w.pod.Start(w.command())
	w.waitFor("/readyz", func() bool { code, _ := w.admin("/readyz"); return code == "200" })
	pid := w.pids()[0]
	if err := w.agent.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	w.waitFor("the proxy to die with shunt", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		// Gone, or a zombie until its parent is reaped.
		return err != nil || strings.Contains(string(b), ") Z ")
	})
}

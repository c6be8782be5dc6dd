package cniscale

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// apiServer answers the one request the node agent makes at rest, the list
// of its node's pods, with none: this bench's pods are made by cnitool, not
// by a kubelet, so the API knows of none and the agent has nothing to
// repair. Anything else is refused as the API server refuses it. It needs
// the agent's bearer token.
type apiServer struct {
	srv   *httptest.Server
	token string
}

func newAPIServer(t *testing.T, ns *testenv.Netns) *apiServer {
	t.Helper()
	a := &apiServer{token: testenv.UniqueName("bench-token-")}
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatalf("listen in %s: %v", ns.Name(), err)
	}
	a.srv = httptest.NewUnstartedServer(a)
	a.srv.Listener = ln
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

func (a *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	status := func(code int, reason, msg string) {
		a.write(w, code, map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg, "reason": reason, "code": code})
	}
	switch {
	case r.Header.Get("Authorization") != "Bearer "+a.token:
		status(http.StatusUnauthorized, "Unauthorized", "Unauthorized")
	case r.Method != http.MethodGet:
		status(http.StatusMethodNotAllowed, "MethodNotAllowed", "this server only reads")
	case r.URL.Path == "/api/v1/pods" && (r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1"):
		status(http.StatusBadRequest, "BadRequest", "this server does not serve watches")
	case r.URL.Path == "/api/v1/pods":
		a.write(w, http.StatusOK, map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{"resourceVersion": "1"}, "items": []any{}})
	default:
		status(http.StatusNotFound, "NotFound", "the server could not find the requested resource")
	}
}

func (a *apiServer) write(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func (a *apiServer) kubeconfig(t *testing.T) string {
	t.Helper()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw})
	cfg := map[string]any{
		"apiVersion": "v1", "kind": "Config",
		"clusters":        []any{map[string]any{"name": "bench", "cluster": map[string]any{"server": a.srv.URL, "certificate-authority-data": ca}}},
		"users":           []any{map[string]any{"name": "agent", "user": map[string]any{"token": a.token}}},
		"contexts":        []any{map[string]any{"name": "bench", "context": map[string]any{"cluster": "bench", "user": "agent"}}},
		"current-context": "bench",
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// buildAgent builds shunt's full binary (the agent) with the lean build
// beside it as shunt-cni, as in the DaemonSet's image.
func buildAgent(t *testing.T, b bins) string {
	t.Helper()
	dir := t.TempDir()
	agent := filepath.Join(dir, "shunt")
	if err := testenv.BuildShunt(agent); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(b.shunt, filepath.Join(dir, "shunt-cni")); err != nil {
		t.Fatal(err)
	}
	return agent
}

// agentAtRest runs `shunt node` for the node, with the same plugin entry as
// chain, against a conflist of its own (a copy of the bridge-only one, which
// it chains into), waits until it has chained the plugin, lets it settle,
// and returns its RSS and the CPU it used over window at rest.
func agentAtRest(t *testing.T, n *node, agentBin, chain string, window time.Duration) (rssKiB int, cpu time.Duration, err error) {
	t.Helper()
	api := newAPIServer(t, n.ns)
	confDir, binDir := t.TempDir(), t.TempDir()
	src, err := os.ReadFile(filepath.Join(n.confs[chainBase], "10.conflist"))
	if err != nil {
		return 0, 0, err
	}
	conflist := filepath.Join(confDir, "10-bridge.conflist")
	if err := os.WriteFile(conflist, src, 0o644); err != nil {
		return 0, 0, err
	}
	b, err := os.ReadFile(filepath.Join(n.confs[chain], "10.conflist"))
	if err != nil {
		return 0, 0, err
	}
	var c struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return 0, 0, err
	}
	entry := c.Plugins[len(c.Plugins)-1]
	delete(entry, "type")
	pc, err := json.Marshal(entry)
	if err != nil {
		return 0, 0, err
	}
	pluginConf := filepath.Join(t.TempDir(), "cni.json")
	if err := os.WriteFile(pluginConf, pc, 0o644); err != nil {
		return 0, 0, err
	}
	args := []string{"node", "--kubeconfig", api.kubeconfig(t), "--node-name", "bench-node",
		"--cni-bin-dir", binDir, "--cni-conf-dir", confDir, "--backup-dir", filepath.Join(t.TempDir(), "backup"),
		"--plugin-config", pluginConf, "--repair", "report"}
	if n.pinDir != "" {
		args = append(args, "--bpf-pin-dir", n.pinDir, "--node-state-dir", n.nodeState)
	}
	// As the DaemonSet's pod: the node's network, the host's cgroups, and,
	// unlike it, a throwaway bpffs on /sys/fs/bpf. The shell and nsenter
	// exec, so the PID is the agent's.
	cmd := exec.CommandContext(context.Background(), "unshare", append([]string{"--mount", "--propagation", "private",
		"sh", "-c", `mount -t bpf bpf /sys/fs/bpf && exec "$@"`, "sh",
		"nsenter", "--net=" + n.ns.Path(), agentBin}, args...)...)
	agent := testenv.StartProcess(t, cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(conflist); err == nil && strings.Contains(string(b), `"shunt-cni"`) {
			break
		}
		if agent.Exited() || time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("the agent did not chain the plugin:\n%s", agent.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	pid := cmd.Process.Pid
	time.Sleep(2 * time.Second)
	before, err := procCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(window)
	after, err := procCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	rssKiB, err = procRSS(pid)
	if err != nil {
		return 0, 0, err
	}
	if agent.Exited() {
		return 0, 0, fmt.Errorf("the agent exited:\n%s", agent.Output())
	}
	agent.Stop()
	return rssKiB, after - before, nil
}

// procCPU is a process's user+system time, from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / hz, nil
}

// procRSS is a process's resident set, in KiB, from /proc/PID/status.
func procRSS(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

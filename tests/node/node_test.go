package node_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// The agent installs the plugin binary, chains it last into the primary
// CNI's conflist, and gives it a kubeconfig that reaches the API server.
func TestAgentInstallsAndChainsThePlugin(t *testing.T) {
	w := newWorld(t)
	// The node's primary CNI has not written its configuration yet.
	if err := os.Remove(w.conflist); err != nil {
		t.Fatal(err)
	}
	agent := w.startAgent("--repair", "off", "--health-addr", "127.0.0.1:15092")
	waitFor(t, 10*time.Second, "the health endpoint", agent, func() bool { code, _ := w.probe("/healthz"); return code == "200" })
	time.Sleep(300 * time.Millisecond) // more than one interval
	if code, body := w.probe("/readyz"); code != "503" || !strings.Contains(body, "primary CNI") {
		t.Errorf("/readyz without a conflist = %s %q, want 503 naming the wait", code, body)
	}
	if err := os.WriteFile(w.conflist, w.original, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := w.waitChained(agent)
	waitFor(t, 5*time.Second, "/readyz 200 once chained", agent, func() bool { code, _ := w.probe("/readyz"); return code == "200" })

	plugins := conf["plugins"].([]any)
	if len(plugins) != 2 || plugins[0].(map[string]any)["type"] != "bridge" {
		t.Errorf("conflist plugins = %v, want bridge then shunt-cni", plugins)
	}
	entry := plugins[len(plugins)-1].(map[string]any)
	if entry["stateDir"] != w.stateDir {
		t.Errorf("shunt entry stateDir = %v, want %s (from --plugin-config)", entry["stateDir"], w.stateDir)
	}

	installed, err := os.ReadFile(filepath.Join(w.binDir, "shunt-cni"))
	if err != nil {
		t.Fatalf("plugin binary not installed: %v", err)
	}
	// The lean build lies beside the agent's binary, as in the
	// DaemonSet's image: that is what goes in the CNI bin directory.
	lean, err := os.ReadFile(filepath.Join(filepath.Dir(bins.shunt), "shunt-cni"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(installed, lean) {
		t.Errorf("installed shunt-cni is not the lean build beside the agent's binary")
	}
	if st, err := os.Stat(filepath.Join(w.binDir, "shunt-cni")); err == nil && st.Mode().Perm()&0o111 == 0 {
		t.Errorf("shunt-cni is not executable: %v", st.Mode())
	}

	kc, _ := entry["kubeconfig"].(string)
	if kc == "" {
		t.Fatalf("shunt entry has no kubeconfig: the plugin could not read annotations\n%v", entry)
	}
	st, err := os.Stat(kc)
	if err != nil {
		t.Fatalf("plugin kubeconfig %s: %v", kc, err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("plugin kubeconfig mode %v, want 0600 (it holds a token)", st.Mode().Perm())
	}
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatalf("plugin kubeconfig: %v", err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil || cfg.Clusters[ctx.Cluster].Server != w.api.srv.URL {
		t.Errorf("plugin kubeconfig does not point at the API server %s", w.api.srv.URL)
	} else if len(cfg.Clusters[ctx.Cluster].CertificateAuthorityData) == 0 {
		t.Errorf("plugin kubeconfig carries no CA: the plugin cannot verify the server")
	}
	if nothing := filepath.Join(w.confDir, ".shunt-"); len(globOf(t, nothing+"*")) != 0 {
		t.Errorf("temporary files left in the conf dir: %v", globOf(t, nothing+"*"))
	}

	// The primary CNI rewrites its file (its upgrade, new content): the
	// agent chains itself again within its interval, and from then on the
	// rewrite is what removal must give back.
	rewritten := bytes.Replace(w.original, []byte(`"ipMasq": false`), []byte(`"ipMasq": false, "hairpinMode": true`), 1)
	if err := os.WriteFile(w.conflist, rewritten, 0o644); err != nil {
		t.Fatal(err)
	}
	w.original = rewritten
	conf = w.waitChained(agent)
	if first := conf["plugins"].([]any)[0].(map[string]any); first["hairpinMode"] != true {
		t.Errorf("re-chaining lost the primary CNI's rewrite: %v", first)
	}

	// Stopped without --cleanup (a rolling update), the agent leaves the
	// plugin chained so no pod starts uncaptured meanwhile.
	agent.Stop()
	b, _ := os.ReadFile(w.conflist)
	if !strings.Contains(string(b), "shunt-cni") {
		t.Errorf("the agent unchained the plugin on stop without --cleanup")
	}
	if _, err := os.Stat(filepath.Join(w.binDir, "shunt-cni")); err != nil {
		t.Errorf("the agent removed shunt-cni on stop without --cleanup: %v", err)
	}
	w.uninstall()
}

// probe GETs the agent's health endpoint from the node namespace and
// returns the status code and body.
func (w *world) probe(path string) (string, string) {
	out, _ := w.node.Run("curl", "-s", "--max-time", "2", "-w", "\n%{http_code}", "http://127.0.0.1:15092"+path)
	out = strings.TrimSpace(out)
	i := strings.LastIndexByte(out, '\n')
	return out[i+1:], strings.TrimSpace(out[:max(i, 0)])
}

func globOf(t *testing.T, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// uninstall runs `shunt node --uninstall` and checks the node is given
// back exactly what it had.
func (w *world) uninstall() {
	w.t.Helper()
	out, err := w.node.Command(w.t.Context(), bins.shunt, "node", "--uninstall",
		"--cni-bin-dir", w.binDir, "--cni-conf-dir", w.confDir, "--backup-dir", w.backupDir).CombinedOutput()
	if err != nil {
		w.t.Fatalf("shunt node --uninstall: %v\n%s", err, out)
	}
	w.assertRestored()
}

func (w *world) assertRestored() {
	w.t.Helper()
	b, err := os.ReadFile(w.conflist)
	if err != nil {
		w.t.Fatal(err)
	}
	if !bytes.Equal(b, w.original) {
		w.t.Errorf("conflist not restored byte for byte:\n got %s\nwant %s", b, w.original)
	}
	for _, p := range []string{filepath.Join(w.binDir, "shunt-cni"), filepath.Join(w.confDir, "shunt-kubeconfig")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			w.t.Errorf("%s left after removal (%v)", p, err)
		}
	}
	ents, _ := os.ReadDir(w.confDir)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		w.t.Errorf("conf dir holds %v, want only %s", names, filepath.Base(w.conflist))
	}
}

// A pod created after the agent chained the plugin is captured with its
// annotations: an excluded port bypasses the proxy, another goes through
// it; a pod of a namespace that opts out is not captured at all.
func TestPodAddedAfterTheAgentIsCapturedWithItsAnnotations(t *testing.T) {
	w := newWorld(t)
	w.api.addNamespace("shop", nil)
	w.api.addNamespace("legacy", map[string]string{"shunt.dev/capture": "false"})
	w.api.addPod("shop", "web", nodeName, "", map[string]string{"shunt.dev/exclude-outbound-ports": "8081"})
	w.api.addPod("legacy", "batch", nodeName, "", nil)
	agent := w.startAgent("--repair", "off")
	w.waitChained(agent)

	web := w.newPod("shop", "web")
	if out := web.add(); !strings.Contains(out, "10.244.9.") {
		t.Errorf("ADD result lacks the bridge's address:\n%s", out)
	}
	// The bridge, and its address, exist once the first pod is wired.
	w.serveOnNode(8080)
	w.serveOnNode(8081)
	if r := web.rules(); !strings.Contains(r, "SHUNT_OUTPUT") {
		t.Fatalf("no shunt rules in shop/web after ADD:\n%s", r)
	}
	web.startProxy()
	if !web.viaProxy(8080) {
		t.Errorf("shop/web: connection to port 8080 did not go through the proxy")
	}
	if web.viaProxy(8081) {
		t.Errorf("shop/web: connection to port 8081, excluded by annotation, went through the proxy")
	}
	if !w.served("GET /api/v1/namespaces/shop/pods/web") || !w.served("GET /api/v1/namespaces/shop") {
		t.Errorf("the plugin did not read the pod and its namespace; requests: %v", w.api.seen())
	}

	batch := w.newPod("legacy", "batch")
	batch.add()
	if r := batch.rules(); r != "" {
		t.Errorf("legacy/batch, in a namespace with shunt.dev/capture=false, was captured:\n%s", r)
	}
	batch.startProxy()
	if batch.viaProxy(8080) {
		t.Errorf("legacy/batch: connection went through the proxy")
	}

	// A pod whose annotation is a typo fails its ADD, naming it, and is
	// left without rules.
	w.api.addPod("shop", "typo", nodeName, "", map[string]string{"shunt.dev/exclude-outbond-ports": "22"})
	typo := w.newPod("shop", "typo")
	t.Cleanup(func() { _, _ = typo.cnitool("del") })
	if out, err := typo.cnitool("add"); err == nil {
		t.Errorf("ADD succeeded for a pod with an unknown shunt.dev annotation:\n%s", out)
	} else if !strings.Contains(out, "exclude-outbond-ports") {
		t.Errorf("ADD error does not name the annotation:\n%s", out)
	}
	if r := typo.rules(); r != "" {
		t.Errorf("rules left after a failed ADD:\n%s", r)
	}

	// The plugin passes CHECK and DEL through.
	if out, err := web.cnitool("check"); err != nil {
		t.Errorf("CHECK of a captured pod: %v\n%s", err, out)
	}
	if out, err := web.cnitool("del"); err != nil {
		t.Errorf("DEL: %v\n%s", err, out)
	}
	if r := web.rules(); r != "" {
		t.Errorf("shunt rules left after DEL:\n%s", r)
	}
}

func (w *world) served(req string) bool {
	for _, r := range w.api.seen() {
		if r == req || strings.HasPrefix(r, req+"?") {
			return true
		}
	}
	return false
}

func containerID(t *testing.T) string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// startedBeforeTheAgent makes a pod that the runtime built before shunt
// was chained: wired by the primary CNI alone, with a running process.
func (w *world) startedBeforeTheAgent(namespace, name string, annotations map[string]string) *pod {
	w.t.Helper()
	id := containerID(w.t)
	p := w.newPod(namespace, name)
	p.add()
	if r := p.rules(); r != "" {
		w.t.Fatalf("pod captured before the agent ran:\n%s", r)
	}
	p.startWorkload(id)
	w.api.addPod(namespace, name, nodeName, "containerd://"+id, annotations)
	return p
}

// A pod that was running before the agent chained the plugin is found
// through /proc and captured, with its annotations; a pod that opts out is
// left alone.
func TestRepairInstallCapturesPodsStartedBefore(t *testing.T) {
	w := newWorld(t)
	w.api.addNamespace("shop", nil)
	w.api.addNamespace("legacy", map[string]string{"shunt.dev/capture": "false"})
	web := w.startedBeforeTheAgent("shop", "web", map[string]string{"shunt.dev/exclude-outbound-ports": "8081"})
	w.serveOnNode(8080)
	w.serveOnNode(8081)
	batch := w.startedBeforeTheAgent("legacy", "batch", nil)
	web.startProxy()
	if web.viaProxy(8080) {
		t.Fatalf("traffic through the proxy before any capture")
	}

	agent := w.startAgent("--repair", "install")
	waitFor(t, 15*time.Second, "shop/web repaired", agent, func() bool {
		return strings.Contains(web.rules(), "SHUNT_OUTPUT")
	})
	if !web.viaProxy(8080) {
		t.Errorf("repaired shop/web: connection to port 8080 did not go through the proxy")
	}
	if web.viaProxy(8081) {
		t.Errorf("repaired shop/web: connection to excluded port 8081 went through the proxy")
	}
	if !w.served("GET /api/v1/pods?fieldSelector=spec.nodeName%3D" + nodeName) {
		t.Errorf("the agent did not list its node's pods by field selector; requests: %v", w.api.seen())
	}
	// A few more scans: the repaired pod is not repaired again, the
	// opted-out one never.
	time.Sleep(time.Second)
	if n := strings.Count(agent.Output(), "pod repaired"); n != 1 {
		t.Errorf("the agent repaired %d times, want once:\n%s", n, agent.Output())
	}
	if r := batch.rules(); r != "" {
		t.Errorf("legacy/batch, in a namespace with shunt.dev/capture=false, was captured:\n%s", r)
	}
	if strings.Contains(agent.Output(), "legacy/batch") {
		t.Errorf("the agent reported legacy/batch, which opts out:\n%s", agent.Output())
	}
	if recs := globOf(t, filepath.Join(w.stateDir, "repair-*", "cni.json")); len(recs) != 1 {
		t.Errorf("repair records %v, want one for shop/web", recs)
	}

	// A pod the plugin captured, now running, is not captured twice.
	w.api.addPod("shop", "api", nodeName, "", nil)
	api := w.newPod("shop", "api")
	api.add()
	id := containerID(t)
	api.startWorkload(id)
	w.api.addPod("shop", "api", nodeName, "containerd://"+id, nil)
	if r := api.rules(); !strings.Contains(r, "SHUNT_OUTPUT") {
		t.Fatalf("shop/api not captured by the plugin:\n%s", r)
	}
	time.Sleep(time.Second)
	if strings.Contains(agent.Output(), "shop/api") {
		t.Errorf("the agent acted on shop/api, which the plugin captured:\n%s", agent.Output())
	}
}

// With --repair report the agent only names such pods.
func TestRepairReportOnlyLogs(t *testing.T) {
	w := newWorld(t)
	w.api.addNamespace("shop", nil)
	web := w.startedBeforeTheAgent("shop", "web", nil)
	agent := w.startAgent("--repair", "report")
	waitFor(t, 15*time.Second, "shop/web reported", agent, func() bool {
		return strings.Contains(agent.Output(), "pod is not captured") && strings.Contains(agent.Output(), "shop/web")
	})
	if r := web.rules(); r != "" {
		t.Errorf("--repair report installed rules:\n%s", r)
	}
	if recs := globOf(t, filepath.Join(w.stateDir, "*")); len(recs) != 0 {
		t.Errorf("--repair report left state: %v", recs)
	}
}

// `shunt node --uninstall` gives the node its conflist back byte for byte
// and removes the plugin's files; captured pods keep their rules until they
// are recreated, new pods get none.
func TestUninstallRestoresTheNode(t *testing.T) {
	w := newWorld(t)
	w.api.addNamespace("shop", nil)
	w.api.addPod("shop", "web", nodeName, "", nil)
	agent := w.startAgent("--repair", "off")
	w.waitChained(agent)
	web := w.newPod("shop", "web")
	web.add()
	agent.Stop()
	w.uninstall()
	if r := web.rules(); !strings.Contains(r, "SHUNT_OUTPUT") {
		t.Errorf("uninstall removed a running pod's rules; documented to keep them:\n%s", r)
	}
	w.api.addPod("shop", "api", nodeName, "", nil)
	w.api.addPod("shop", "api", nodeName, "", nil)
	api := w.newPod("shop", "api")
	api.add()
	if r := api.rules(); r != "" {
		t.Errorf("a pod created after uninstall was captured:\n%s", r)
	}
	// Running it again is harmless.
	w.uninstall()
}

// With --cleanup the agent unchains when its pod is deleted (SIGTERM).
func TestCleanupOnSIGTERM(t *testing.T) {
	w := newWorld(t)
	agent := w.startAgent("--repair", "off", "--cleanup")
	w.waitChained(agent)
	if err := agent.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !agent.Exited() {
		if time.Now().After(deadline) {
			t.Fatalf("agent did not exit on SIGTERM:\n%s", agent.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !agent.Cmd.ProcessState.Success() {
		t.Errorf("agent exited with %v on SIGTERM:\n%s", agent.Cmd.ProcessState, agent.Output())
	}
	w.assertRestored()
}

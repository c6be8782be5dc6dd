package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const primary = `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

func TestChainAppendsAndUnchainRestores(t *testing.T) {
	conf, backup := t.TempDir(), t.TempDir()
	path := filepath.Join(conf, "10-primary.conflist")
	if err := os.WriteFile(path, []byte(primary), 0o644); err != nil {
		t.Fatal(err)
	}
	// A later file is not the one the runtime uses.
	if err := os.WriteFile(filepath.Join(conf, "20-other.conflist"), []byte(primary), 0o644); err != nil {
		t.Fatal(err)
	}
	got, changed, err := Chain(conf, backup, map[string]any{"capture": map[string]any{"outboundPort": 15001}})
	if err != nil || !changed || got != path {
		t.Fatalf("Chain = %s, %v, %v", got, changed, err)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"type": "shunt-cni"`) || strings.Index(string(b), "portmap") > strings.Index(string(b), "shunt-cni") {
		t.Errorf("shunt-cni not appended last:\n%s", b)
	}
	// Chaining again changes nothing.
	if _, changed, err := Chain(conf, backup, map[string]any{"capture": map[string]any{"outboundPort": 15001}}); err != nil || changed {
		t.Errorf("second Chain changed=%v err=%v", changed, err)
	}
	// A changed entry is updated in place, not appended twice.
	if _, changed, err := Chain(conf, backup, map[string]any{"capture": map[string]any{"outboundPort": 15101}}); err != nil || !changed {
		t.Errorf("update Chain changed=%v err=%v", changed, err)
	}
	b, _ = os.ReadFile(path)
	if strings.Count(string(b), "shunt-cni") != 1 || !strings.Contains(string(b), "15101") {
		t.Errorf("entry not updated in place:\n%s", b)
	}
	if err := Unchain(conf, backup); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if string(b) != primary {
		t.Errorf("original not restored byte for byte:\n%s", b)
	}
	if ents, _ := os.ReadDir(backup); len(ents) != 0 {
		t.Errorf("backups left: %v", ents)
	}
	for _, e := range mustReadDir(t, conf) {
		if strings.HasPrefix(e, ".") {
			t.Errorf("temporary file left in the conf dir: %s", e)
		}
	}
}

func TestUnchainKeepsTheprimarysRewrite(t *testing.T) {
	conf, backup := t.TempDir(), t.TempDir()
	path := filepath.Join(conf, "10-primary.conflist")
	if err := os.WriteFile(path, []byte(primary), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Chain(conf, backup, nil); err != nil {
		t.Fatal(err)
	}
	// The primary CNI rewrites its file, keeping our entry.
	b, _ := os.ReadFile(path)
	rewritten := strings.Replace(string(b), "10.244.0.0/24", "10.244.9.0/24", 1)
	if err := os.WriteFile(path, []byte(rewritten), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Unchain(conf, backup); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if strings.Contains(string(b), "shunt-cni") || !strings.Contains(string(b), "10.244.9.0/24") {
		t.Errorf("unchain lost the rewrite or kept shunt:\n%s", b)
	}
}

func TestChainWaitsForAConflist(t *testing.T) {
	if _, _, err := Chain(t.TempDir(), t.TempDir(), nil); err != ErrNoConflist {
		t.Errorf("Chain in an empty dir = %v, want ErrNoConflist", err)
	}
}

func TestInstallBinaryIsAtomicCopy(t *testing.T) {
	src := filepath.Join(t.TempDir(), "shunt")
	if err := os.WriteFile(src, []byte("#!binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := InstallBinary(src, bin); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(bin, PluginType))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed plugin: %v %v", st, err)
	}
	if names := mustReadDir(t, bin); len(names) != 1 {
		t.Errorf("bin dir holds %v", names)
	}
}

func mustReadDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// The primary CNI rewrites its file and the agent chains into the rewrite:
// removal gives back the rewrite, not the file the agent first saw.
func TestUnchainAfterRechainRestoresTheRewrite(t *testing.T) {
	conf, backup := t.TempDir(), t.TempDir()
	path := filepath.Join(conf, "10-primary.conflist")
	if err := os.WriteFile(path, []byte(primary), 0o644); err != nil {
		t.Fatal(err)
	}
	entry := map[string]any{"capture": map[string]any{"outboundPort": 15001}}
	if _, _, err := Chain(conf, backup, entry); err != nil {
		t.Fatal(err)
	}
	rewrite := strings.Replace(primary, `"portmap"`, `"portmap", "snat": true`, 1)
	if err := os.WriteFile(path, []byte(rewrite), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, changed, err := Chain(conf, backup, entry); err != nil || !changed {
		t.Fatalf("re-chain changed=%v err=%v", changed, err)
	}
	if err := Unchain(conf, backup); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != rewrite {
		t.Errorf("Unchain gave back\n%s\nwant the primary CNI's rewrite\n%s", b, rewrite)
	}
}

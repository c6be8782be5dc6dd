//go:build !lean

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The lean build starts once per pod (init container, CNI plugin): it must
// not link the packages whose initialisation made every start cost tens of
// milliseconds, nor those it has no use for whose initialisation and size
// were a measurable share of what is left (net/http and its HTTP/2, MIME
// and IDNA tables: the CNI plugin's two GETs have their own client in
// cni/kubeapi; miekg/dns: resolv.conf is parsed without it; go-iptables:
// status lists the counters with iptables -v -S itself).
func TestLeanBuildLinksNoAgentDependency(t *testing.T) {
	checkBuildLinks(t, "lean", leanExcludes)
}

// leanExcludes are the packages the lean build must not link.
var leanExcludes = []string{"k8s.io/", "github.com/envoyproxy/", "github.com/prometheus/", "google.golang.org/grpc", "github.com/shunt-dev/shunt/agent", "github.com/shunt-dev/shunt/controlplane", "github.com/shunt-dev/shunt/xdsclient", "github.com/shunt-dev/shunt/node",
	"net/http", "github.com/miekg/dns", "golang.org/x/net/http2", "vendor/golang.org/x/net/http2", "vendor/golang.org/x/net/idna", "mime", "github.com/coreos/go-iptables"}

// The init container's build (-tags lean,initcontainer) installs netfilter
// rules in its own pod: on top of what the lean build leaves out, the eBPF
// engine (cilium/ebpf, and debug/elf, encoding/xml, go/parser with it) and
// the CNI plugin with its API client (crypto/tls, crypto/x509), whose
// initialisation was about a tenth of a whole install's time; and the
// FIPS 140 module crypto/sha256 brings (about half a millisecond of each
// install): the nftables record's digests are internal/digest; and
// yaml.v3 (about 0.4 ms): the config file is read by internal/confnode.
func TestInitContainerBuildLinksNoEBPFOrPlugin(t *testing.T) {
	checkBuildLinks(t, "lean,initcontainer", append([]string{"github.com/cilium/ebpf", "github.com/shunt-dev/shunt/redirect/ebpf",
		"github.com/shunt-dev/shunt/cni", "github.com/containernetworking/cni", "crypto/tls", "crypto/x509", "crypto/sha256", "crypto/internal/fips140", "gopkg.in/yaml.v3", "encoding/xml", "go/parser", "debug/elf"}, leanExcludes...))
}

func checkBuildLinks(t *testing.T, tags string, excluded []string) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go command not found")
	}
	out, err := exec.Command("go", "list", "-deps", "-tags", tags, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, h := range excluded {
			if strings.HasPrefix(pkg, h) && (pkg == h || strings.HasPrefix(pkg, strings.TrimSuffix(h, "/")+"/") || strings.HasSuffix(h, "/")) {
				t.Errorf("the build with -tags %s links %s", tags, pkg)
			}
		}
	}
}

// The init container's build reads its config file without yaml.v3
// (internal/confnode): a file as users write it sets what it says, and
// what that reader does not implement is refused with the file and line.
func TestInitContainerBuildReadsTheConfigFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the dry run reads a network namespace of its own (unshare -n)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare not found")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "shunt-init")
	if out, err := exec.Command("go", "build", "-tags", "lean,initcontainer", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	resolv := write("resolv.conf", "nameserver 10.96.0.10\n")
	run := func(config string) (string, error) {
		cmd := exec.Command("unshare", "-n", bin, "install", "--dry-run", "--config", config, "--resolv-conf", resolv)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	good := write("capture.yaml", "# the pod's capture\nengine: nftables\nexcludeOutboundPorts: [9090, 9091] # metrics\nexcludeInboundPorts:\n  - 15020\n")
	out, err := run(good)
	if err != nil {
		t.Fatalf("install --dry-run with %s: %v\n%s", good, err, out)
	}
	for _, want := range []string{"table inet shunt", "elements = { 15020 }", "elements = { 9090-9091 }"} {
		if !strings.Contains(out, want) {
			t.Errorf("the dry run of %s has no %q:\n%s", good, want, out)
		}
	}
	bad := write("anchors.yaml", "engine: nftables\nexcludeOutboundPorts: &ports [9090]\n")
	out, err = run(bad)
	if err == nil || !strings.Contains(out, bad+": yaml: line 2: anchors (&) are not supported") {
		t.Errorf("install --dry-run with %s: %v, want a refusal naming the file and line 2:\n%s", bad, err, out)
	}
}

// Package image_test builds the init container image with
// init-container/build.sh, unpacks it, and runs its entrypoint as a
// runtime would: chrooted into the image's root, in a fresh pod network
// namespace, with the image's environment.
package image_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// image is the unpacked image: its root and how its entrypoint runs.
type image struct {
	rootfs string
	args   []string
	env    []string
}

// buildImage builds the image kind ("init" or "node") with
// init-container/build.sh and unpacks it.
func buildImage(t *testing.T, kind string) *image {
	t.Helper()
	testenv.RequireRoot(t)
	for _, tool := range []string{"umoci", "skopeo", "chroot", "iptables-nft-save"} {
		testenv.RequireBinary(t, tool)
	}
	dir := t.TempDir()
	archive := filepath.Join(dir, "shunt-"+kind+".oci.tar")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "bash", "../../init-container/build.sh", archive)
	build.Env = append(os.Environ(), "SHUNT_IMAGE="+kind)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build.sh (SHUNT_IMAGE=%s): %v\n%s", kind, err, out)
	}
	run(t, ctx, "skopeo", "copy", "--quiet", "oci-archive:"+archive, "oci:"+filepath.Join(dir, "oci")+":latest")
	bundle := filepath.Join(dir, "bundle")
	run(t, ctx, "umoci", "unpack", "--image", filepath.Join(dir, "oci")+":latest", bundle)
	t.Cleanup(func() { _ = os.RemoveAll(bundle) })

	var spec struct {
		Process struct {
			Args []string `json:"args"`
			Env  []string `json:"env"`
		} `json:"process"`
	}
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatalf("parse runtime config: %v", err)
	}
	img := &image{rootfs: filepath.Join(bundle, "rootfs"), args: spec.Process.Args, env: spec.Process.Env}
	// The kubelet gives every container of a pod, init containers too,
	// the pod's resolv.conf.
	if err := os.WriteFile(filepath.Join(img.rootfs, "etc/resolv.conf"), []byte("nameserver 10.96.0.10\nsearch default.svc.cluster.local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The runtime would mount /proc (shunt reads /proc/self/ns/net)...
	proc := filepath.Join(img.rootfs, "proc")
	run(t, ctx, "mount", "-t", "proc", "proc", proc)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", proc).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", proc, err, out)
		}
	})
	// and /dev/null, which os/exec opens for a child's unused streams.
	null := filepath.Join(img.rootfs, "dev/null")
	if err := os.WriteFile(null, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "mount", "--bind", "/dev/null", null)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", null).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", null, err, out)
		}
	})
	return img
}

func run(t *testing.T, ctx context.Context, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// entrypoint runs the image's entrypoint in the pod namespace with the
// image's environment plus env, and extra arguments.
func (img *image) entrypoint(pod *testenv.Netns, env []string, extra ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"-i"}, img.env...)
	args = append(args, env...)
	args = append(args, "chroot", img.rootfs)
	args = append(args, img.args...)
	args = append(args, extra...)
	out, err := pod.Command(ctx, "env", args...).CombinedOutput()
	return string(out), err
}

func shuntRules(t *testing.T, pod *testenv.Netns) string {
	t.Helper()
	var b strings.Builder
	for _, prog := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(prog); err != nil {
			continue
		}
		for _, l := range strings.Split(pod.MustRun(prog), "\n") {
			if strings.Contains(strings.ToLower(l), "shunt") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// newPod is a pod namespace with a default route through a peer, as a pod
// has once its CNI ran.
func newPod(t *testing.T) (*testenv.Netns, testenv.Host) {
	pod := testenv.NewNetns(t, "pod")
	peer := testenv.NewNetns(t, "gw")
	podIf, peerIf := testenv.Link(t, pod, peer, 1)
	testenv.AddDefaultRoute(t, podIf, peerIf)
	return pod, podIf
}

func TestInitContainerImage(t *testing.T) {
	img := buildImage(t, "init")

	t.Run("minimal", func(t *testing.T) {
		for _, p := range []string{"usr/bin/sh", "usr/bin/bash", "usr/bin/apt-get", "usr/bin/dpkg"} {
			if _, err := os.Lstat(filepath.Join(img.rootfs, p)); err == nil {
				t.Errorf("the image contains /%s", p)
			}
		}
		if len(img.args) < 2 || img.args[0] != "/usr/local/bin/shunt" || img.args[1] != "install" {
			t.Errorf("entrypoint = %q, want /usr/local/bin/shunt install", img.args)
		}
		if _, err := os.Stat(filepath.Join(img.rootfs, "usr/local/bin/shunt-ebpf")); err != nil {
			t.Errorf("the image lacks the build with the eBPF engine: %v", err)
		}
	})

	t.Run("nftables engine", func(t *testing.T) {
		pod, _ := newPod(t)
		out, err := img.entrypoint(pod, []string{"SHUNT_ENGINE=nftables"})
		if err != nil {
			t.Fatalf("entrypoint: %v\n%s", err, out)
		}
		if r := pod.MustRun("nft", "list", "table", "inet", "shunt"); !strings.Contains(r, "redirect to :15001") {
			t.Errorf("table inet shunt after the entrypoint:\n%s", r)
		}
	})

	// The entrypoint is the init container's build, without the eBPF
	// engine: asked for it, it says where the build with it is, and that
	// one (shunt-ebpf) is a whole lean build.
	t.Run("eBPF engine is shunt-ebpf", func(t *testing.T) {
		pod, _ := newPod(t)
		out, err := img.entrypoint(pod, []string{"SHUNT_ENGINE=ebpf", "SHUNT_CGROUP=/sys/fs/cgroup"}, "--dry-run")
		if err == nil || !strings.Contains(out, "/usr/local/bin/shunt-ebpf") {
			t.Errorf("the entrypoint with engine ebpf: %v\n%s", err, out)
		}
		if r := shuntRules(t, pod); r != "" {
			t.Errorf("rules installed despite the error:\n%s", r)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		// The chroot has no cgroup file system, so the engine's probe
		// fails there: on the cgroup, not for want of the engine.
		args := append(append([]string{"-i"}, img.env...), "SHUNT_ENGINE=ebpf", "SHUNT_CGROUP=/sys/fs/cgroup", "chroot", img.rootfs, "/usr/local/bin/shunt-ebpf", "install", "--dry-run")
		out2, _ := pod.Command(ctx, "env", args...).CombinedOutput()
		if strings.Contains(string(out2), "no eBPF engine") || !strings.Contains(string(out2), "cgroup") {
			t.Errorf("shunt-ebpf install --engine ebpf --dry-run:\n%s", out2)
		}
	})

	t.Run("install and validate", func(t *testing.T) {
		pod, _ := newPod(t)
		out, err := img.entrypoint(pod, nil, "--validate")
		if err != nil {
			t.Fatalf("entrypoint: %v\n%s", err, out)
		}
		if !strings.Contains(out, "capture validated") {
			t.Errorf("no validation reported:\n%s", out)
		}
		r := shuntRules(t, pod)
		if !strings.Contains(r, "SHUNT_OUTPUT") || !strings.Contains(r, "--to-ports 15001") {
			t.Errorf("rules after the entrypoint:\n%s", r)
		}
	})

	t.Run("mounted config file and environment", func(t *testing.T) {
		pod, _ := newPod(t)
		cfg := filepath.Join(img.rootfs, "etc/shunt/capture.yaml")
		if err := os.WriteFile(cfg, []byte("excludeOutboundPorts: [2222]\noutboundPort: 15101\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.WriteFile(cfg, nil, 0o644) })
		out, err := img.entrypoint(pod, []string{"SHUNT_INBOUND_PORT=15106"})
		if err != nil {
			t.Fatalf("entrypoint: %v\n%s", err, out)
		}
		r := shuntRules(t, pod)
		for _, want := range []string{"2222", "--to-ports 15101", "--to-ports 15106"} {
			if !strings.Contains(r, want) {
				t.Errorf("rules lack %q:\n%s", want, r)
			}
		}
	})

	t.Run("bad configuration fails clearly and installs nothing", func(t *testing.T) {
		pod, _ := newPod(t)
		out, err := img.entrypoint(pod, []string{"SHUNT_OUTBOUND_PORT=99999"})
		if err == nil {
			t.Fatalf("entrypoint succeeded with outbound port 99999:\n%s", out)
		}
		if !strings.Contains(out, "outboundPort") {
			t.Errorf("error does not name the key:\n%s", out)
		}
		if r := shuntRules(t, pod); r != "" {
			t.Errorf("rules installed despite the error:\n%s", r)
		}
	})

	t.Run("validation fails when traffic is not redirected", func(t *testing.T) {
		pod, podIf := newPod(t)
		// Capture that excludes the pod's only interface captures nothing
		// that leaves it: validation must say so.
		out, err := img.entrypoint(pod, []string{"SHUNT_EXCLUDE_INTERFACES=" + podIf.Dev}, "--validate")
		if err == nil {
			t.Fatalf("validation passed with the pod's interface excluded:\n%s", out)
		}
		if !strings.Contains(out, "not redirected") {
			t.Errorf("validation error is not clear:\n%s", out)
		}
	})
}

// TestNodeImage: the DaemonSet's image runs `shunt node` (the full build)
// and carries the lean build the agent installs as the CNI plugin.
func TestNodeImage(t *testing.T) {
	img := buildImage(t, "node")
	if len(img.args) < 2 || img.args[0] != "/usr/local/bin/shunt" || img.args[1] != "node" {
		t.Errorf("entrypoint = %q, want /usr/local/bin/shunt node", img.args)
	}
	for _, p := range []string{"usr/bin/sh", "usr/bin/bash", "usr/bin/apt-get"} {
		if _, err := os.Lstat(filepath.Join(img.rootfs, p)); err == nil {
			t.Errorf("the image contains /%s", p)
		}
	}
	pod, _ := newPod(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	chrooted := func(env []string, argv ...string) (string, error) {
		args := append(append(append([]string{"-i"}, img.env...), env...), append([]string{"chroot", img.rootfs}, argv...)...)
		out, err := pod.Command(ctx, "env", args...).CombinedOutput()
		return string(out), err
	}
	if out, err := chrooted(nil, "/usr/local/bin/shunt", "node", "--help"); err != nil || !strings.Contains(out, "--cni-bin-dir") {
		t.Errorf("shunt node --help in the image: %v\n%s", err, out)
	}
	// Named shunt-cni, the lean build is the plugin.
	out, err := chrooted([]string{"CNI_COMMAND=VERSION"}, "/usr/local/bin/shunt-cni")
	if err != nil || !strings.Contains(out, "cniVersion") {
		t.Errorf("shunt-cni VERSION in the image: %v\n%s", err, out)
	}
}

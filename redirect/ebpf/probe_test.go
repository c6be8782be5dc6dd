package ebpf

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

func TestProbe(t *testing.T) {
	requireRoot(t)
	if err := Probe(testenv.NewCgroup(t)); err != nil {
		t.Fatalf("probe on this kernel: %v", err)
	}
}

func TestProbeRefusesNonCgroup(t *testing.T) {
	err := Probe(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "is not a cgroup-v2 directory") {
		t.Fatalf("want a refusal naming cgroup v2, got %v", err)
	}
	if _, err := New(Options{CgroupPath: t.TempDir()}); err == nil {
		t.Fatal("New accepted a directory that is not a cgroup")
	}
	if _, err := New(Options{}); err == nil {
		t.Fatal("New accepted no cgroup")
	}
}

func TestInstallRefusesPinDirOutsideBPFFS(t *testing.T) {
	requireRoot(t)
	e, err := New(Options{CgroupPath: testenv.NewCgroup(t), PinDir: filepath.Join(t.TempDir(), "pins"), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	plan := &redirect.Plan{ProxyUID: 5678, OutboundPort: 15001, InboundPort: 15006, DNSPort: 15053, DNSMode: redirect.DNSNone, IPFamily: redirect.FamilyDual}
	err = e.Install(context.Background(), plan)
	if err == nil || !strings.Contains(err.Error(), "mount -t bpf bpf") {
		t.Fatalf("want an error telling to mount bpffs, got %v", err)
	}
}

func TestDefaultPinDir(t *testing.T) {
	requireRoot(t)
	cg := testenv.NewCgroup(t)
	e, err := New(Options{CgroupPath: cg})
	if err != nil {
		t.Fatal(err)
	}
	want := "/sys/fs/bpf/shunt/" + filepath.Base(cg)
	if e.PinDir() != want {
		t.Fatalf("pin dir %s, want %s", e.PinDir(), want)
	}
}

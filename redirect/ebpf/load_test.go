package ebpf

import (
	"errors"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (CAP_BPF, CAP_NET_ADMIN); CI runs as root")
		}
		t.Skip("loading BPF programs needs root")
	}
}

// TestVerifierAcceptsPrograms loads every program on the running kernel.
func TestVerifierAcceptsPrograms(t *testing.T) {
	requireRoot(t)
	spec, err := loadCapture()
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		t.Fatalf("verifier: %+v", ve)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for _, a := range attachments {
		if coll.Programs[a.prog] == nil {
			t.Errorf("program %s is missing", a.prog)
		}
	}
}

// TestVerifierAcceptsNodePrograms loads the node object's programs.
func TestVerifierAcceptsNodePrograms(t *testing.T) {
	requireRoot(t)
	spec, err := loadNodeCapture()
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		t.Fatalf("verifier: %+v", ve)
	}
	if err != nil {
		t.Fatal(err)
	}
	coll.Close()
}

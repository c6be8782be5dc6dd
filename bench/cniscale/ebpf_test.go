package cniscale

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/shunt-dev/shunt/redirect/ebpf"
)

// loadNodePrograms does what `shunt node` does once per node with the eBPF
// engine: load and pin the node-wide programs. probe is a cgroup made (and
// removed) to ask the kernel first whether it can run them at all.
func loadNodePrograms(pinDir, stateDir, probe string) error {
	if err := os.Mkdir(probe, 0o755); err != nil {
		return fmt.Errorf("create probe cgroup: %w", err)
	}
	defer os.Remove(probe)
	if err := ebpf.Probe(probe); err != nil {
		return fmt.Errorf("the kernel cannot run shunt's eBPF capture: %w", err)
	}
	n, err := ebpf.NewNode(ebpf.NodeOptions{PinDir: pinDir, StateDir: stateDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("load the node's programs: %w", err)
	}
	return n.Close()
}

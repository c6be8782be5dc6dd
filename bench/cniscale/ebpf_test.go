package cniscale

import (
	"fmt"
	"log/slog"
	"os"
	"time"

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

// openNodeTime is what each plugin process pays before it enrols a pod:
// opening the node's pinned programs and maps (parsing the embedded object
// to check they are this build's), in this process, median of n.
func openNodeTime(pinDir, stateDir string, n int) (time.Duration, error) {
	ds := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		node, err := ebpf.OpenNode(ebpf.NodeOptions{PinDir: pinDir, StateDir: stateDir, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(start))
		node.Close()
	}
	return median(ds), nil
}

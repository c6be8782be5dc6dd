package ebpf_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	cebpf "github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// TestNodePodWithEmptyListsHasNoInnerMap: a pod whose plan lists no CIDRs
// gets no inner map in the node's maps of maps (each write to one waits
// for an RCU grace period, and an absent map reads as empty), is still
// captured, and shows no drift; a CIDR added later creates its map and
// excludes, and removing it captures again.
func TestNodePodWithEmptyListsHasNoInnerMap(t *testing.T) {
	node, opts := ebpftest.NewNode(t)
	pod := ebpftest.NewPodN(t, 1)
	remote := pod.StartRemote("echo-server", "10.1.0.2:8080")
	ebpftest.WaitOutput(t, remote, "listening 10.1.0.2:8080")
	ha := pod.HAProxyAs(proxy, 15001)

	outer, err := cebpf.LoadPinnedMap(filepath.Join(opts.PinDir, "map_pod_exclude_out_cidrs"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close()
	var st unix.Stat_t
	if err := unix.Stat(pod.Cgroup, &st); err != nil {
		t.Fatal(err)
	}
	hasInner := func() bool {
		var id cebpf.MapID
		err := outer.Lookup(st.Ino, &id)
		if err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
			t.Fatalf("lookup the pod in pod_exclude_out_cidrs: %v", err)
		}
		return err == nil
	}
	noDrift := func(when string) {
		t.Helper()
		s, err := node.Status(context.Background(), pod.Cgroup)
		if err != nil || len(s.Drift) > 0 {
			t.Fatalf("status %s: %v %v", when, err, s.Drift)
		}
	}

	plan := ebpftest.Plan()
	plan.CaptureInbound = false
	pod.Enrol(node, plan)
	if hasInner() {
		t.Error("an empty exclusion list made an inner map")
	}
	noDrift("with no lists")
	if !captured(t, pod, ha, app, "10.1.0.2:8080") {
		t.Fatal("not captured with no lists")
	}

	excl := plan.Clone()
	excl.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.0.2/32")}
	pod.Enrol(node, excl)
	if !hasInner() {
		t.Error("no inner map for an exclusion list")
	}
	noDrift("with an exclusion")
	if captured(t, pod, ha, app, "10.1.0.2:8080") {
		t.Fatal("excluded CIDR still captured")
	}

	pod.Enrol(node, plan)
	noDrift("after the exclusion was removed")
	if !captured(t, pod, ha, app, "10.1.0.2:8080") {
		t.Fatal("not captured after the exclusion was removed")
	}
}

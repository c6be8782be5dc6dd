package ebpf_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestPlanUpdateWritesOnlyChanges: changing the excluded CIDRs of a plan
// with 10,000 of them swaps no program and leaves the maps exactly as a
// fresh install of the new plan would, both ways (a prefix added, one
// removed).
func TestPlanUpdateWritesOnlyChanges(t *testing.T) {
	bpftool := testenv.RequireBinary(t, "bpftool")
	pod := ebpftest.NewPod(t)
	ctx := context.Background()
	plan := ebpftest.Plan()
	plan.CaptureInbound = false // no proxy listens here; Status would say so
	for i := 0; len(plan.ExcludeOutboundCIDRs) < 10000; i++ {
		a := netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)})
		plan.ExcludeOutboundCIDRs = append(plan.ExcludeOutboundCIDRs, netip.PrefixFrom(a, 32))
	}
	e := pod.Install(plan)
	progs := cgroupLinks(t, bpftool, pod.Cgroup)

	added := plan.Clone()
	added.ExcludeOutboundCIDRs = append(added.ExcludeOutboundCIDRs, netip.MustParsePrefix("198.18.0.0/15"))
	removed := added.Clone()
	removed.ExcludeOutboundCIDRs = removed.ExcludeOutboundCIDRs[1:]
	start := time.Now()
	if err := e.Install(ctx, added); err != nil {
		t.Fatal(err)
	}
	t.Logf("one prefix added to 10,000 in %s", time.Since(start))
	start = time.Now()
	if err := e.Install(ctx, removed); err != nil {
		t.Fatal(err)
	}
	t.Logf("one prefix removed from 10,001 in %s", time.Since(start))
	if got := cgroupLinks(t, bpftool, pod.Cgroup); !slices.Equal(got, progs) {
		t.Errorf("a plan change replaced programs: %v, then %v", progs, got)
	}
	st, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Drift) > 0 {
		t.Fatalf("maps differ from the plan after updates: %v", st.Drift[:min(5, len(st.Drift))])
	}
	if !st.Plan.Equal(removed) {
		t.Fatal("the recorded plan is not the last one installed")
	}
}

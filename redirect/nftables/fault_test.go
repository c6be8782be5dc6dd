package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	gnft "github.com/google/nftables"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestRejectedBatchChangesNothing has the kernel refuse a batch (an
// element of the wrong length in a set) and checks that the table installed
// before is exactly as it was, and so is the record.
func TestRejectedBatchChangesNothing(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	ctx := context.Background()
	n := testenv.NewNetns(t, "nftfault")
	dir := t.TempDir()
	eng := New(Options{NetnsPath: n.Path(), StateDir: dir, LockDir: t.TempDir()})
	plans := scenarios(t)
	if err := eng.Install(ctx, plans["lockdown"]); err != nil {
		t.Fatal(err)
	}
	before := nftList(t, n, "-j")
	record, err := os.ReadFile(filepath.Join(dir, "capture.json"))
	if err != nil {
		t.Fatal(err)
	}
	spoil := func(rs *Ruleset) {
		for _, s := range rs.sets {
			if s.name == "exclude_outbound4" {
				s.elems = append(s.elems, gnft.SetElement{Key: []byte{10, 0, 0}})
			}
		}
	}
	for _, next := range []*redirect.Plan{plans["exclusions"], withAllowed(plans["lockdown"], "198.51.100.0/24")} {
		eng.corrupt = spoil
		err := eng.Install(ctx, next)
		if err == nil || !strings.Contains(err.Error(), "nothing was changed") {
			t.Fatalf("install of a spoiled batch: %v", err)
		}
		if after := nftList(t, n, "-j"); after != before {
			t.Errorf("a refused batch changed the table:\nbefore %s\nafter  %s", before, after)
		}
		if now, _ := os.ReadFile(filepath.Join(dir, "capture.json")); string(now) != string(record) {
			t.Errorf("a refused batch changed the record")
		}
	}
	eng.corrupt = nil
	if st, err := eng.Status(ctx); err != nil || len(st.Drift) > 0 {
		t.Errorf("status after refused batches: %v %v", st.Drift, err)
	}
	// The engine dropped the sockets of the refused batches: the next
	// change goes through whole.
	want := withAllowed(plans["lockdown"], "198.51.100.0/24")
	if err := eng.Install(ctx, want); err != nil {
		t.Fatalf("install after refused batches: %v", err)
	}
	if st, err := eng.Status(ctx); err != nil || len(st.Drift) > 0 || !st.Plan.Equal(want) {
		t.Errorf("status after the next install: %v %v", st, err)
	}
}

func withAllowed(p *redirect.Plan, prefix string) *redirect.Plan {
	q := p.Clone()
	q.Egress.Allowed = append(q.Egress.Allowed, netip.MustParsePrefix(prefix))
	return q
}

// TestConcurrentInstallsSerialise starts installs of different plans at
// once, from engines that share only the namespace and the lock directory
// (as two shunt processes would): each batch reads and writes the table
// alone, so the survivor's record matches the live table.
func TestConcurrentInstallsSerialise(t *testing.T) {
	ctx := context.Background()
	n := testenv.NewNetns(t, "nftconc")
	locks, state := t.TempDir(), t.TempDir()
	plans := scenarios(t)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 20; i++ {
		for _, name := range []string{"lockdown", "exclusions"} {
			wg.Add(1)
			go func(p *redirect.Plan) {
				defer wg.Done()
				if i%2 == 1 {
					p.ExcludeOutboundCIDRs = append(p.ExcludeOutboundCIDRs, netip.MustParsePrefix(fmt.Sprintf("198.51.100.%d/32", i)))
				}
				errs <- New(Options{NetnsPath: n.Path(), StateDir: state, LockDir: locks}).Install(ctx, p)
			}(plans[name].Clone())
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent install: %v", err)
		}
	}
	st, err := New(Options{NetnsPath: n.Path(), StateDir: state, LockDir: locks}).Status(ctx)
	if err != nil || !st.Installed || len(st.Drift) > 0 {
		t.Fatalf("after concurrent installs: %+v %v", st, err)
	}
}

// TestDriftIsReportedAndRestored changes shunt's table with nft as another
// tool would, and checks status names the change and install restores it.
func TestDriftIsReportedAndRestored(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	ctx := context.Background()
	n := testenv.NewNetns(t, "nftdrift")
	eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
	p := scenarios(t)["lockdown"]
	if err := eng.Install(ctx, p); err != nil {
		t.Fatal(err)
	}
	clean := nftList(t, n)
	handle := func(chain, text string) string {
		for _, l := range strings.Split(nftList(t, n, "-a"), "\n") {
			if strings.Contains(l, text) {
				if i := strings.Index(l, "# handle "); i >= 0 {
					return l[i+len("# handle "):]
				}
			}
		}
		t.Fatalf("no rule %q in %s", text, chain)
		return ""
	}
	cases := []struct {
		name  string
		nft   []string
		drift string
	}{
		{"rule deleted", []string{"delete", "rule", "inet", "shunt", "output4", "handle", handle("output4", "redirect to :15001")}, "missing: rule output4: meta l4proto tcp redirect to :15001"},
		{"rule added", []string{"insert", "rule", "inet", "shunt", "egress4", "accept"}, "unexpected: rule egress4: (a rule shunt did not write"},
		{"element added", []string{"add", "element", "inet", "shunt", "allowed4", "{", "192.0.2.1", "}"}, "set allowed4: unexpected element 192.0.2.1"},
		{"chain flushed", []string{"flush", "chain", "inet", "shunt", "egress6"}, "missing: rule egress6: reject with icmpv6 port-unreachable"},
		{"table deleted", []string{"delete", "table", "inet", "shunt"}, "table inet shunt is missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n.MustRun("nft", c.nft...)
			driftIsReportedAndRestored(ctx, t, eng, p, n, c.drift, clean)
		})
	}
}

// TestCrashAfterTheBatchIsRecognised stands for a kill -9 between the
// kernel's commit and the record's write: the new table is live beside the
// old record (or none). Status reports it, install and uninstall settle it.
func TestCrashAfterTheBatchIsRecognised(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	ctx := context.Background()
	plans := scenarios(t)
	load := func(n *testenv.Netns, p *redirect.Plan) {
		t.Helper()
		file := filepath.Join(t.TempDir(), "batch.nft")
		if err := os.WriteFile(file, []byte(Render(p).String()), 0o644); err != nil {
			t.Fatal(err)
		}
		n.MustRun("nft", "-f", file)
	}

	n := testenv.NewNetns(t, "nftcrash")
	eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
	if err := eng.Install(ctx, plans["default"]); err != nil {
		t.Fatal(err)
	}
	load(n, plans["lockdown"]) // committed, never recorded
	if st, err := eng.Status(ctx); err != nil || len(st.Drift) == 0 {
		t.Errorf("status beside an unrecorded batch: %+v %v", st, err)
	}
	if err := eng.Install(ctx, plans["default"]); err != nil {
		t.Fatal(err)
	}
	if st, err := eng.Status(ctx); err != nil || len(st.Drift) > 0 {
		t.Errorf("status after install settled it: %v %v", st.Drift, err)
	}

	first := testenv.NewNetns(t, "nftcrash1")
	fresh := New(Options{NetnsPath: first.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
	load(first, plans["default"]) // a first install killed before its record
	st, err := fresh.Status(ctx)
	if err != nil || st.Installed || !strings.Contains(strings.Join(st.Drift, "\n"), "no installation is recorded") {
		t.Errorf("status of a table without a record: %+v %v", st, err)
	}
	if err := fresh.Uninstall(ctx); err != nil {
		t.Errorf("uninstall of a table without a record: %v", err)
	}
	if out, _ := first.Run("nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Errorf("uninstall left %s", out)
	}
}

// driftIsReportedAndRestored checks, after a change made outside shunt, that
// status names it (want is part of a drift line) and that an install puts
// the table back exactly as clean.
func driftIsReportedAndRestored(ctx context.Context, t *testing.T, eng *Engine, p *redirect.Plan, n *testenv.Netns, want, clean string) {
	t.Helper()
	st, err := eng.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(st.Drift, "\n"), want) {
		t.Errorf("drift %q does not report %q", st.Drift, want)
	}
	if err := eng.Install(ctx, p); err != nil {
		t.Fatal(err)
	}
	if st, err := eng.Status(ctx); err != nil || len(st.Drift) > 0 {
		t.Errorf("after restore: %v %v", st.Drift, err)
	}
	if got := nftList(t, n); got != clean {
		t.Errorf("restored table differs:\n%s\nwant\n%s", got, clean)
	}
}

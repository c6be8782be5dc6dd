package nftables

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// nftList is nft's own view of shunt's table: the tests' independent
// checker (shunt itself never runs nft).
func nftList(t *testing.T, n *testenv.Netns, args ...string) string {
	t.Helper()
	out, err := n.Run("nft", append(args, "list", "table", "inet", TableName)...)
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	return out
}

// TestInstallIsWhatNftMakesOfTheDryRun holds the netlink batch to the text
// --dry-run prints: the table shunt writes over netlink and the table nft -f
// writes from the rendered text list the same, for every scenario. It also
// walks each scenario through status, a repeated install and uninstall.
func TestInstallIsWhatNftMakesOfTheDryRun(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	for name, p := range scenarios(t) {
		t.Run(name, func(t *testing.T) {
			a, b := testenv.NewNetns(t, "nft"), testenv.NewNetns(t, "nftref")
			ctx := context.Background()
			eng := New(Options{NetnsPath: a.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
			dry, err := eng.Render(ctx, p)
			if err != nil {
				t.Fatalf("dry run: %v", err)
			}
			if err := eng.Install(ctx, p); err != nil {
				t.Fatalf("install: %v", err)
			}
			file := filepath.Join(t.TempDir(), "shunt.nft")
			if err := os.WriteFile(file, []byte(dry["inet"]), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := b.Run("nft", "-f", file); err != nil {
				t.Fatalf("nft -f of the dry run: %v: %s", err, out)
			}
			if got, want := nftList(t, a), nftList(t, b); got != want {
				t.Errorf("netlink install and nft -f differ:\nshunt:\n%s\nnft -f:\n%s", got, want)
			}
			st, err := eng.Status(ctx)
			if err != nil || !st.Installed || len(st.Drift) > 0 {
				t.Fatalf("status after install: %+v %v", st, err)
			}
			// The kernel lists each set as it was sent: what lets a set
			// change be recorded without reading the table back.
			rec, err := redirect.LoadState(eng.opts.StateDir)
			if err != nil {
				t.Fatal(err)
			}
			var read, sent []string
			for _, l := range strings.Split(rec.Applied["inet"], "\n") {
				if strings.HasPrefix(l, "set ") {
					read = append(read, l)
				}
			}
			for _, s := range sentSets(Render(p)) {
				sent = append(sent, s.line())
			}
			if strings.Join(read, "\n") != strings.Join(sent, "\n") {
				t.Errorf("sets read back differ from the sets sent:\n%s\nsent:\n%s", read, sent)
			}
			if err := eng.Install(ctx, p); err != nil {
				t.Fatalf("second install: %v", err)
			}
			if err := eng.Uninstall(ctx); err != nil {
				t.Fatalf("uninstall: %v", err)
			}
			if out, err := a.Run("nft", "list", "ruleset"); err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("ruleset after uninstall: %q %v", out, err)
			}
			if err := eng.Uninstall(ctx); err != redirect.ErrNotInstalled {
				t.Errorf("second uninstall: %v, want ErrNotInstalled", err)
			}
		})
	}
}

// TestFreshInstallDeletesNothing: where the table is absent, install and
// its dry run create it without the delete-and-rewrite of a replacement,
// whose deferred clean-up an init container's exit would wait for; where
// it exists, both replace it whole.
func TestFreshInstallDeletesNothing(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	ctx := context.Background()
	p := scenarios(t)["default"]
	a := testenv.NewNetns(t, "nftnew")
	eng := New(Options{NetnsPath: a.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
	dry, err := eng.Render(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(dry["inet"], "delete table") {
		t.Errorf("dry run for a namespace without the table deletes it first:\n%s", dry["inet"])
	}
	if err := eng.Install(ctx, p); err != nil {
		t.Fatal(err)
	}
	// Table handles count up per namespace: a table created, deleted and
	// created again in the batch would be the second.
	if l := nftList(t, a, "-a"); !strings.Contains(l, "table inet shunt { # handle 1\n") {
		t.Errorf("fresh install did not create the table directly:\n%s", l)
	}
	if dry, err = eng.Render(ctx, p); err != nil || !strings.HasPrefix(dry["inet"], "table inet shunt\ndelete table inet shunt\n") {
		t.Errorf("dry run over the installed table: %v\n%s", err, dry["inet"])
	}
}

// TestInstallOverAForeignTable: a table named like shunt's, made by
// another tool before the install, or between the install's check that
// there is none and its batch, ends up exactly as rendered.
func TestInstallOverAForeignTable(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	ctx := context.Background()
	p := scenarios(t)["default"]
	ref := testenv.NewNetns(t, "nftref")
	if err := New(Options{NetnsPath: ref.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()}).Install(ctx, p); err != nil {
		t.Fatal(err)
	}
	want := nftList(t, ref)
	foreign := "add table inet shunt\nadd chain inet shunt output4 { type nat hook output priority 0; }\nadd rule inet shunt output4 tcp dport 9 accept\n"
	for _, when := range []string{"before", "between"} {
		t.Run(when, func(t *testing.T) {
			a := testenv.NewNetns(t, "nftfor")
			eng := New(Options{NetnsPath: a.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
			add := func() {
				file := filepath.Join(t.TempDir(), "foreign.nft")
				if err := os.WriteFile(file, []byte(foreign), 0o644); err != nil {
					t.Fatal(err)
				}
				if out, err := a.Run("nft", "-f", file); err != nil {
					t.Fatalf("nft -f: %v: %s", err, out)
				}
			}
			if when == "before" {
				add()
			} else {
				eng.afterCheck = add
			}
			if err := eng.Install(ctx, p); err != nil {
				t.Fatal(err)
			}
			if got := nftList(t, a); got != want {
				t.Errorf("install over a foreign table:\n%s\nwant:\n%s", got, want)
			}
			if st, err := eng.Status(ctx); err != nil || !st.Installed || len(st.Drift) > 0 {
				t.Errorf("status: %+v %v", st, err)
			}
		})
	}
}

// TestSetChangeIsElementsOnly changes only set contents and checks the
// result equals a fresh install of the new plan.
func TestSetChangeIsElementsOnly(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	p := scenarios(t)["lockdown"]
	q := p.Clone()
	q.Egress.Allowed = append(q.Egress.Allowed, netip.MustParsePrefix("10.1.0.10/32"), netip.MustParsePrefix("241.0.0.0/8"), netip.MustParsePrefix("fd00:e::/48"))
	q.Egress.Allowed = q.Egress.Allowed[1:] // 240.0.0.0/4 removed
	q.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	elementChangeEqualsFreshInstall(context.Background(), t, p, q)
}

// elementChangeEqualsFreshInstall installs p, then q, which differs from
// it in set contents only, and checks that no rule was rewritten (the rule
// handles stay), that the table equals a fresh install of q in another
// namespace, and that status sees no drift.
func elementChangeEqualsFreshInstall(ctx context.Context, t *testing.T, p, q *redirect.Plan) {
	t.Helper()
	a, b := testenv.NewNetns(t, "nftinc"), testenv.NewNetns(t, "nftfresh")
	eng := New(Options{NetnsPath: a.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
	if err := eng.Install(ctx, p); err != nil {
		t.Fatal(err)
	}
	before := nftList(t, a, "-a")
	if err := eng.Install(ctx, q); err != nil {
		t.Fatal(err)
	}
	if after := nftList(t, a, "-a"); handles(before) != handles(after) {
		t.Errorf("an element change rewrote rules:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	fresh := New(Options{NetnsPath: b.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
	if err := fresh.Install(ctx, q); err != nil {
		t.Fatal(err)
	}
	if got, want := nftList(t, a), nftList(t, b); got != want {
		t.Errorf("element update and fresh install differ:\nupdated:\n%s\nfresh:\n%s", got, want)
	}
	if st, err := eng.Status(ctx); err != nil || len(st.Drift) > 0 {
		t.Errorf("status after element update: %v %v", st.Drift, err)
	}
}

// handles keeps the "# handle N" of each rule line.
func handles(listing string) string {
	var out []string
	for _, l := range strings.Split(listing, "\n") {
		if i := strings.Index(l, "# handle "); i >= 0 && !strings.Contains(l, "chain ") && !strings.Contains(l, "set ") {
			out = append(out, l[i:])
		}
	}
	return strings.Join(out, ",")
}

// TestKeptSocketsFollowTheNamespacePath: a long-lived engine keeps its
// netlink sockets between changes, but a path that comes to name another
// namespace gets sockets of that namespace, not the first one's.
func TestKeptSocketsFollowTheNamespacePath(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	ctx := context.Background()
	a, b := testenv.NewNetns(t, "nftka"), testenv.NewNetns(t, "nftkb")
	link := filepath.Join(t.TempDir(), "netns")
	if err := os.Symlink(a.Path(), link); err != nil {
		t.Fatal(err)
	}
	eng := New(Options{NetnsPath: link, StateDir: t.TempDir(), LockDir: t.TempDir()})
	plans := scenarios(t)
	if err := eng.Install(ctx, plans["lockdown"]); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(b.Path(), link); err != nil {
		t.Fatal(err)
	}
	next := withAllowed(plans["lockdown"], "198.51.100.0/24")
	if err := eng.Install(ctx, next); err != nil {
		t.Fatal(err)
	}
	if out := nftList(t, b); !strings.Contains(out, "198.51.100.0/24") {
		t.Errorf("the second install did not reach the namespace the path now names:\n%s", out)
	}
	if out := nftList(t, a); strings.Contains(out, "198.51.100.0/24") {
		t.Errorf("the second install went to the namespace the path used to name:\n%s", out)
	}
	if err := eng.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := a.Run("nft", "delete", "table", "inet", TableName); err != nil {
		t.Fatalf("clean up the first namespace: %v: %s", err, out)
	}
}

// TestRecordReads holds the three ways a table is read to one answer, for
// every scenario: a table read whole, and one taken as sent (its chains
// and sets from the rendering) with only its rules dumped, as an install
// records a table it proved it alone wrote, give the same record; and the
// legacy digests of the one dump are the netlink library's own decoding,
// read chain by chain, as records of earlier builds were written. The
// rules a fresh table's batch echoes read as its dump does.
func TestRecordReads(t *testing.T) {
	ctx := context.Background()
	for name, p := range scenarios(t) {
		t.Run(name, func(t *testing.T) {
			n := testenv.NewNetns(t, "nftdump")
			eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()})
			if err := eng.Install(ctx, p); err != nil {
				t.Fatal(err)
			}
			c, g := dialBoth(t, n.Path())
			none := func(string, string) (string, bool) { return "", false }
			whole, err := readTable(c, g, readHow{})
			if err != nil {
				t.Fatal(err)
			}
			rs := Render(p)
			asSent, err := readTable(c, g, readHow{sets: sentSets(rs), asSent: rs})
			if err != nil {
				t.Fatal(err)
			}
			if a, b := whole.record(none), asSent.record(none); a != b {
				t.Errorf("the table read whole and taken as sent differ:\n%s\nas sent:\n%s", a, b)
			}
			if n := strings.Count(whole.record(none), "\nrule "); n < 10 {
				t.Errorf("only %d rules read", n)
			}
			st, err := redirect.LoadState(eng.opts.StateDir)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := st.Applied["inet"], whole.record(textsOf(st)); got != want {
				t.Errorf("the install recorded\n%s\nthe table reads\n%s", got, want)
			}
			if legacyRecord(st) {
				t.Error("a new record is taken for a legacy one")
			}
			// The rules a batch echoes are the rules the table lists.
			m := testenv.NewNetns(t, "nftecho")
			gm, err := dialGen(m.Path())
			if err != nil {
				t.Fatal(err)
			}
			defer gm.Close()
			_, echoed, err := applyBatch(gm, func(q *batch) error { return queueFreshTable(q, rs) }, true)
			if err != nil {
				t.Fatal(err)
			}
			if len(echoed) != rs.ruleCount() {
				t.Fatalf("%d rules echoed, %d sent", len(echoed), rs.ruleCount())
			}
			fromEcho, err := readTable(c, g, readHow{sets: sentSets(rs), asSent: rs, rules: echoed})
			if err != nil {
				t.Fatal(err)
			}
			if a, b := whole.record(none), fromEcho.record(none); a != b {
				t.Errorf("the table read whole and its batch's echoes differ:\n%s\nechoes:\n%s", a, b)
			}
			legacy, err := readTable(c, g, readHow{legacy: true})
			if err != nil {
				t.Fatal(err)
			}
			if a, b := libraryRecord(t, c, legacy.sets), legacy.record(none); a != b {
				t.Errorf("legacy digests of the dump and the library's reads differ:\n%s\nlibrary:\n%s", b, a)
			}
		})
	}
}

// libraryRecord is the record an earlier build wrote of a table holding
// sets: its chains listed and its rules read chain by chain by the
// netlink library, each digested as JSON of the library's decoding.
func libraryRecord(t *testing.T, c *nftables.Conn, sets []setSnap) string {
	t.Helper()
	chains, err := readChains(c)
	if err != nil {
		t.Fatal(err)
	}
	live := &snapshot{sets: sets}
	for _, ch := range chains {
		rules, err := c.GetRules(table(), &nftables.Chain{Name: ch.name, Table: table()})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			ch.rules = append(ch.rules, ruleRef{digest: legacyDigest(r.Exprs), handle: r.Handle})
		}
		live.chains = append(live.chains, ch)
	}
	return live.record(func(string, string) (string, bool) { return "", false })
}

// TestLegacyRecordStillMatches: a table recorded by an earlier build,
// whose record digests rules as JSON of the library's decoding, is not
// taken for drift by this one: status finds it as recorded, and the same
// install again commits nothing.
func TestLegacyRecordStillMatches(t *testing.T) {
	ctx := context.Background()
	p := scenarios(t)["lockdown"]
	n := testenv.NewNetns(t, "nftlegacy")
	opts := Options{NetnsPath: n.Path(), StateDir: t.TempDir(), LockDir: t.TempDir()}
	if err := New(opts).Install(ctx, p); err != nil {
		t.Fatal(err)
	}
	c, g := dialBoth(t, n.Path())
	old, err := readTable(c, g, readHow{legacy: true})
	if err != nil {
		t.Fatal(err)
	}
	texts := old.texts(Render(p))
	st, err := redirect.LoadState(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	st.Applied["inet"] = old.record(func(chain, d string) (string, bool) { s, ok := texts[chain+" "+d]; return s, ok })
	if !legacyRecord(st) {
		t.Fatalf("a record with legacy digests is not recognised:\n%s", st.Applied["inet"])
	}
	if err := redirect.SaveState(opts.StateDir, st); err != nil {
		t.Fatal(err)
	}
	s, err := New(opts).Status(ctx)
	if err != nil || !s.Installed || len(s.Drift) > 0 {
		t.Fatalf("status of a legacy record: %+v %v", s, err)
	}
	gen0, err := g.get()
	if err != nil {
		t.Fatal(err)
	}
	if err := New(opts).Install(ctx, p); err != nil {
		t.Fatal(err)
	}
	if gen, err := g.get(); err != nil || gen != gen0 {
		t.Errorf("the same install over a legacy record committed: generation %d, was %d (%v)", gen, gen0, err)
	}
}

// dialBoth opens the engine's two netlink sockets in the namespace at path,
// closed when the test ends.
func dialBoth(t *testing.T, path string) (*nftables.Conn, *genConn) {
	t.Helper()
	c, done, err := dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(done)
	g, err := dialGen(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return c, g
}

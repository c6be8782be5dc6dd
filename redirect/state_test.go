package redirect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestStateRoundTripAndLock(t *testing.T) {
	dir := t.TempDir()
	if st, err := LoadState(dir); err != nil || st != nil {
		t.Fatalf("empty dir: %v, %v", st, err)
	}
	p, err := NewConfig().Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	want := &State{Engine: "iptables", Backend: "nft", Plan: p, Families: []string{"ipv4"}, Applied: map[string]string{"ipv4": "x"}}
	if err := SaveState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(dir)
	if err != nil || got.Engine != "iptables" || !got.Plan.Equal(p) || got.Applied["ipv4"] != "x" {
		t.Fatalf("LoadState = %+v, %v", got, err)
	}
	if err := SaveResolvConf(dir, []byte("nameserver 10.0.0.1\n")); err != nil {
		t.Fatal(err)
	}
	if err := RemoveState(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{stateFile, ResolvConfFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after RemoveState: %v", f, err)
		}
	}

	// A held lock makes the next taker wait, until its context ends.
	unlock, err := LockState(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := LockState(ctx, dir); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second LockState while held: %v, want the context's deadline", err)
	}
	unlock()
	unlock2, err := LockState(context.Background(), dir)
	if err != nil {
		t.Fatalf("LockState after release: %v", err)
	}
	unlock2()
}

// TestLocksNeedNoFiles: the namespace lock is the namespace's own file,
// whatever path names it and whatever lock directory a process was given;
// the state lock is the directory; neither creates a file; and the lock
// files of earlier builds are still honoured where they exist.
func TestLocksNeedNoFiles(t *testing.T) {
	held := func(lock func(context.Context) (func(), error)) bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		unlock, err := lock(ctx)
		if err == nil {
			unlock()
			return false
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("lock: %v", err)
		}
		return true
	}
	lockDirA, lockDirB := t.TempDir(), t.TempDir()
	unlock, err := LockNetns(context.Background(), lockDirA, "/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	other := fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	if !held(func(ctx context.Context) (func(), error) { return LockNetns(ctx, lockDirB, other) }) {
		t.Error("the namespace was locked again through another path and lock directory while held")
	}
	unlock()
	if held(func(ctx context.Context) (func(), error) { return LockNetns(ctx, lockDirB, other) }) {
		t.Error("the namespace stayed locked after release")
	}

	// An earlier build holding its lock file keeps this one waiting.
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	legacy := filepath.Join(lockDirA, fmt.Sprintf("netns-%d-%d.lock", st.Dev, st.Ino))
	release := holdFlock(t, legacy)
	if !held(func(ctx context.Context) (func(), error) { return LockNetns(ctx, lockDirA, "") }) {
		t.Error("an earlier build's namespace lock file, held, was not waited for")
	}
	release()

	dir := t.TempDir()
	unlock, err = LockState(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !held(func(ctx context.Context) (func(), error) { return LockState(ctx, dir) }) {
		t.Error("the state directory was locked twice")
	}
	unlock()
	release = holdFlock(t, filepath.Join(dir, ".lock"))
	if !held(func(ctx context.Context) (func(), error) { return LockState(ctx, dir) }) {
		t.Error("an earlier build's state lock file, held, was not waited for")
	}
	release()

	for _, d := range []string{lockDirB, filepath.Join(t.TempDir(), "fresh")} {
		unlock, err := LockState(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		unlock()
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("locking created files in %s: %v", d, ents)
		}
	}
}

// holdFlock creates path and holds an flock on it, as an earlier build's
// lock did.
func holdFlock(t *testing.T, path string) func() {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	return func() { f.Close() }
}

func TestIntentIsRecordedAndCleared(t *testing.T) {
	dir := t.TempDir()
	if err := RecordIntent(dir, nil, Intent{Engine: "iptables", Backend: "nft", Families: []string{"ipv4"}}); err != nil {
		t.Fatal(err)
	}
	st, err := LoadState(dir)
	if err != nil || st == nil || st.Intent == nil || st.Engine != "iptables" || st.Backend != "nft" || st.Intent.PID == 0 {
		t.Fatalf("intent record = %+v, %v", st, err)
	}
	if err := ClearIntent(dir, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := LoadState(dir); st != nil || err != nil {
		t.Fatalf("after clearing an install that found nothing: %+v, %v", st, err)
	}
	prev := &State{Engine: "iptables", Backend: "legacy", Families: []string{"ipv4"}}
	if err := RecordIntent(dir, prev, Intent{Engine: "iptables", Backend: "nft", Families: []string{"ipv4", "ipv6"}}); err != nil {
		t.Fatal(err)
	}
	st, _ = LoadState(dir)
	if st.Backend != "legacy" || st.Intent == nil || st.Intent.Backend != "nft" {
		t.Fatalf("intent over a previous install = %+v", st)
	}
	if err := ClearIntent(dir, prev); err != nil {
		t.Fatal(err)
	}
	if st, _ = LoadState(dir); st.Intent != nil || st.Backend != "legacy" {
		t.Fatalf("after rollback = %+v", st)
	}
}

// The record is written by a hand-made encoder for the plan's prefix
// lists: it must say exactly what encoding/json says, and load back.
func TestStateEncodingMatchesEncodingJSON(t *testing.T) {
	p, err := NewConfig().Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	many := make([]netip.Prefix, 0, 1000)
	for i := 0; i < 1000; i++ {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 32))
	}
	full := p.Clone()
	full.ExcludeOutboundCIDRs = many
	full.ExcludeInboundCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("10.0.0.0/8")}
	full.MeshCIDRs = []netip.Prefix{netip.MustParsePrefix("240.240.0.0/16")}
	full.IncludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	full.Egress = &Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("241.0.0.0/8")}}
	at := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	for name, st := range map[string]*State{
		"no plan":     {Engine: "nftables", InstalledAt: at},
		"empty lists": {Engine: "nftables", Plan: &Plan{}, InstalledAt: at},
		"default":     {Engine: "nftables", Plan: p, Families: []string{"ipv4", "ipv6"}, InstalledAt: at},
		"long lists": {Engine: "nftables", Netns: "/run/netns/x", Plan: full, Families: []string{"ipv4"},
			Applied: map[string]string{"inet": "set x\n"}, Chosen: "auto", InstalledAt: at,
			Intent: &Intent{Engine: "nftables", Plan: p, Families: []string{"ipv4"}, PID: 7, StartedAt: at}},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := encodeState(st)
			if err != nil {
				t.Fatal(err)
			}
			want, err := json.Marshal(st)
			if err != nil {
				t.Fatal(err)
			}
			var g, w any
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, got)
			}
			if err := json.Unmarshal(want, &w); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("encodeState differs from encoding/json:\n got %s\nwant %s", got, want)
			}
			dir := t.TempDir()
			if err := SaveState(dir, st); err != nil {
				t.Fatal(err)
			}
			back, err := LoadState(dir)
			if err != nil {
				t.Fatal(err)
			}
			if (st.Plan == nil) != (back.Plan == nil) || (st.Plan != nil && !back.Plan.Equal(st.Plan)) {
				t.Fatalf("plan after a round trip = %+v, want %+v", back.Plan, st.Plan)
			}
			// A record prepared with its plan ahead of time is the
			// same file.
			pdir := t.TempDir()
			if err := PrepareState(pdir, st.Plan).Save(st); err != nil {
				t.Fatal(err)
			}
			a, _ := os.ReadFile(filepath.Join(dir, stateFile))
			b, _ := os.ReadFile(filepath.Join(pdir, stateFile))
			if string(a) != string(b) || len(a) == 0 {
				t.Fatalf("prepared record differs:\n%s\nwant\n%s", b, a)
			}
		})
	}
}

// TestPendingRecordsLeaveNoTemporaryFiles: a prepared record or resolv.conf
// copy that is dropped leaves nothing behind and the previous files as
// they were; one saved or committed replaces them.
func TestPendingRecordsLeaveNoTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	p, err := NewConfig().Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	if err := SaveState(dir, &State{Engine: "nftables", Plan: p}); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(src, []byte("nameserver 10.0.0.2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SaveResolvConf(dir, []byte("nameserver 10.0.0.1\n")); err != nil {
		t.Fatal(err)
	}
	files := func() []string {
		ents, _ := os.ReadDir(dir)
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	before := files()
	PrepareState(dir, p).Abort()
	PrepareResolvConf(dir, src).Abort()
	PrepareResolvConf(dir, filepath.Join(dir, "absent")).Abort()
	if got := files(); !reflect.DeepEqual(got, before) {
		t.Errorf("dropped records left %v, want %v", got, before)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, ResolvConfFile)); string(b) != "nameserver 10.0.0.1\n" {
		t.Errorf("a dropped copy changed resolv.conf to %q", b)
	}
	ps := PrepareState(dir, p)
	if err := ps.Save(&State{Engine: "iptables", Plan: p}); err != nil {
		t.Fatal(err)
	}
	ps.Abort() // after Save: nothing
	if err := ps.Save(&State{Engine: "iptables", Plan: p}); err == nil {
		t.Error("a record saved twice")
	}
	if err := PrepareResolvConf(dir, src).Commit(); err != nil {
		t.Fatal(err)
	}
	if err := PrepareResolvConf(dir, filepath.Join(dir, "absent")).Commit(); err != nil {
		t.Errorf("a resolv.conf that cannot be read: %v, want nothing kept and no error", err)
	}
	if got := files(); !reflect.DeepEqual(got, before) {
		t.Errorf("saved records left %v, want %v", got, before)
	}
	st, err := LoadState(dir)
	if err != nil || st.Engine != "iptables" {
		t.Errorf("record after Save = %+v, %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, ResolvConfFile)); string(b) != "nameserver 10.0.0.2\n" {
		t.Errorf("resolv.conf after Commit = %q", b)
	}
}

// Records written indented by earlier versions still load.
func TestIndentedRecordLoads(t *testing.T) {
	p, err := NewConfig().Plan(testHost())
	if err != nil {
		t.Fatal(err)
	}
	p.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}
	b, err := json.MarshalIndent(&State{Engine: "nftables", Plan: p, Families: []string{"ipv4"}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stateFile), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := LoadState(dir)
	if err != nil || st.Engine != "nftables" || !st.Plan.Equal(p) {
		t.Fatalf("LoadState of an indented record = %+v, %v", st, err)
	}
}

package redirect

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
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

package rulewatch_test

import (
	"context"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/rulewatch"
	"github.com/shunt-dev/shunt/tests/testenv"
)

func TestChangesInTheNamespaceAreAnnounced(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	watched, other := testenv.NewNetns(t, "rw"), testenv.NewNetns(t, "rwo")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var changes <-chan struct{}
	if err := watched.Do(func() (err error) { changes, err = rulewatch.Watch(ctx); return err }); err != nil {
		t.Fatal(err)
	}

	other.MustRun("nft", "add", "table", "inet", "elsewhere")
	select {
	case <-changes:
		t.Fatal("a change in another namespace was announced")
	case <-time.After(200 * time.Millisecond):
	}

	for _, cmd := range [][]string{
		{"nft", "add", "table", "inet", "t"},
		{"iptables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "RETURN"},
		{"iptables-nft", "-t", "nat", "-F"},
	} {
		watched.MustRun(cmd[0], cmd[1:]...)
		select {
		case <-changes:
		case <-time.After(2 * time.Second):
			t.Fatalf("%v was not announced", cmd)
		}
		// One transaction, one signal.
		select {
		case <-changes:
			t.Fatalf("%v was announced twice", cmd)
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	for range changes {
	}
}

package kernelanswers

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/tests/testenv"
)

func answerOf(t *testing.T, n *testenv.Netns, name string) string {
	t.Helper()
	got := exchange(t, n, "127.0.0.1:15053", []query{{name: name, msg: q(name, dns.TypeA)}})[0]
	if got == nil {
		return "none"
	}
	m := new(dns.Msg)
	if err := m.Unpack(got); err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, rr := range m.Answer {
		s = append(s, rr.(*dns.A).A.String())
	}
	return strings.Join(s, ",")
}

func loaded(t *testing.T, addr string) *Answerer {
	t.Helper()
	a, err := Load(listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	tb, err := dnsproxy.NewTable(map[string][]netip.Addr{"a.mesh": {netip.MustParseAddr(addr)}}, dnsproxy.TableOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Sync(tb); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAttachAfterAKilledProcess: the filter a process left when it was
// killed keeps answering until the next Attach replaces it, and Detach
// then removes the filter and the qdisc that went with it.
func TestAttachAfterAKilledProcess(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, "kanskill")
	first := loaded(t, "240.0.0.1")
	if _, err := Attach(n.Path(), first.Program()); err != nil {
		t.Fatal(err)
	}
	first.Close() // the process is gone; the filter holds the program
	if got := answerOf(t, n, "a.mesh."); got != "240.0.0.1" {
		t.Fatalf("left filter answered %s, want 240.0.0.1", got)
	}
	second := loaded(t, "240.0.0.2")
	if _, err := Attach(n.Path(), second.Program()); err != nil {
		t.Fatal(err)
	}
	if got := answerOf(t, n, "a.mesh."); got != "240.0.0.2" {
		t.Fatalf("after a new Attach answered %s, want 240.0.0.2", got)
	}
	if err := Detach(n.Path()); err != nil {
		t.Fatal(err)
	}
	if out := n.MustRun("tc", "qdisc", "show", "dev", "lo"); strings.Contains(out, "clsact") {
		t.Errorf("Detach left the clsact qdisc shunt added: %s", out)
	}
	if got := answerOf(t, n, "a.mesh."); got != "none" {
		t.Errorf("after Detach answered %s", got)
	}
}

// TestAttachLeavesOtherToolsAlone: a clsact qdisc shunt did not add stays
// after Detach, and another tool's filter at shunt's place is an error
// naming it, with nothing changed.
func TestAttachLeavesOtherToolsAlone(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "tc")
	n := testenv.NewNetns(t, "kansother")
	n.MustRun("tc", "qdisc", "add", "dev", "lo", "clsact")
	a := loaded(t, "240.0.0.1")
	detach, err := Attach(n.Path(), a.Program())
	if err != nil {
		t.Fatal(err)
	}
	if got := answerOf(t, n, "a.mesh."); got != "240.0.0.1" {
		t.Fatalf("answered %s", got)
	}
	if err := detach(); err != nil {
		t.Fatal(err)
	}
	if out := n.MustRun("tc", "qdisc", "show", "dev", "lo"); !strings.Contains(out, "clsact") {
		t.Errorf("Detach removed a clsact qdisc it had not added: %q", out)
	}

	n.MustRun("tc", "filter", "add", "dev", "lo", "egress", "pref", "1", "protocol", "all", "u32", "match", "u32", "0", "0", "classid", "1:1")
	before := n.MustRun("tc", "filter", "show", "dev", "lo", "egress")
	if _, err := Attach(n.Path(), a.Program()); err == nil || !strings.Contains(err.Error(), "u32 filter") {
		t.Fatalf("Attach over another tool's filter: %v", err)
	}
	if after := n.MustRun("tc", "filter", "show", "dev", "lo", "egress"); after != before {
		t.Errorf("a refused Attach changed the filters:\n%s\nwant\n%s", after, before)
	}
}

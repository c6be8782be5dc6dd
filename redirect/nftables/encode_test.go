package nftables

import (
	"bytes"
	"testing"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
)

// TestRuleEncodingIsTheLibrarys: the batch with rules written by
// encodeRule is the batch the netlink library writes, message for message
// and byte for byte, for every scenario, whole or fresh.
func TestRuleEncodingIsTheLibrarys(t *testing.T) {
	for name, p := range scenarios(t) {
		rs := Render(p)
		for how, queue := range map[string]func(*batch) error{
			"fresh": func(b *batch) error { return queueFreshTable(b, rs) },
			"whole": func(b *batch) error { return queueTable(b, rs) },
		} {
			t.Run(name+"/"+how, func(t *testing.T) {
				ours, lib := bothEncodings(t, queue)
				rules := 0
				for i := range lib {
					o, l := ours[i], lib[i]
					if o.Header.Type != l.Header.Type || o.Header.Flags != l.Header.Flags || !bytes.Equal(o.Data, l.Data) {
						t.Fatalf("message %d differs:\nours    %+v %x\nlibrary %+v %x", i, o.Header, o.Data, l.Header, l.Data)
					}
					if l.Header.Type == newRuleType {
						rules++
					}
				}
				if rules != rs.ruleCount() || rules == 0 {
					t.Errorf("%d rules in the batch, %d rendered", rules, rs.ruleCount())
				}
			})
		}
	}
}

// TestRuleEncodingFallsBack: a rule with an expression encodeRule does not
// write goes, with every rule of its batch, through the library.
func TestRuleEncodingFallsBack(t *testing.T) {
	rs := Render(scenarios(t)["default"])
	rs.chains[0].rules = append(rs.chains[0].rules, rule{terms: []term{{"notrack", []expr.Any{&expr.Notrack{}}}}})
	if rs.encodable() {
		t.Fatal("a ruleset with notrack taken for one the rule encoder writes")
	}
	ours, lib := bothEncodings(t, func(b *batch) error { return queueFreshTable(b, rs) })
	for i := range lib {
		if !bytes.Equal(ours[i].Data, lib[i].Data) {
			t.Fatalf("message %d differs", i)
		}
	}
}

// bothEncodings encodes the batch queue adds with the rule encoder and
// through the library, and checks they hold as many messages.
func bothEncodings(t *testing.T, queue func(*batch) error) (ours, lib []netlink.Message) {
	t.Helper()
	ours, err := encodeBatch(queue, false)
	if err != nil {
		t.Fatal(err)
	}
	lib, err = encodeBatch(queue, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(ours) != len(lib) {
		t.Fatalf("%d messages, the library's %d", len(ours), len(lib))
	}
	return ours, lib
}

// BenchmarkBatchEncoding encodes the default plan's fresh table, its rules
// written by encodeRule and through the library:
//
//	go test -run X -bench BatchEncoding -benchmem ./redirect/nftables
func BenchmarkBatchEncoding(b *testing.B) {
	rs := Render(scenarios(b)["default"])
	queue := func(q *batch) error { return queueFreshTable(q, rs) }
	for _, c := range []struct {
		name    string
		library bool
	}{{"rule encoder", false}, {"library", true}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := encodeBatch(queue, c.library); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package nftables

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// dial opens a netlink connection to nf_tables in the namespace at path ("":
// the current one). The namespace is entered by the socket, not by the
// calling thread.
func dial(path string) (*nftables.Conn, func(), error) {
	if path == "" {
		c, err := nftables.New()
		if err != nil {
			return nil, nil, fmt.Errorf("open nftables netlink socket: %w", err)
		}
		return c, func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("netns %s: %w", path, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("open nftables netlink socket in %s: %w", path, err)
	}
	return c, func() { f.Close() }, nil
}

// queueTable adds to c's batch the messages that make shunt's table equal
// rs: the table is created if absent, deleted, and written anew, so the
// kernel applies the whole change or none of it.
func queueTable(c *nftables.Conn, rs *Ruleset) error {
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	return queueContents(c, t, rs)
}

func queueContents(c *nftables.Conn, t *nftables.Table, rs *Ruleset) error {
	for _, s := range rs.sets {
		ns := &nftables.Set{Table: t, ID: s.id, Name: s.name, KeyType: s.kind.keyType(), Interval: s.interval,
			Concatenation: s.kind == kindEndpoint4 || s.kind == kindEndpoint6}
		if err := c.AddSet(ns, s.elems); err != nil {
			return fmt.Errorf("set %s: %w", s.name, err)
		}
	}
	chains := map[string]*nftables.Chain{}
	for _, ch := range rs.chains {
		nc := &nftables.Chain{Name: ch.name, Table: t}
		if h := ch.base; h != nil {
			accept := nftables.ChainPolicyAccept
			prio := nftables.ChainPriority(h.priority)
			nc.Type, nc.Hooknum, nc.Priority, nc.Policy = h.typ, h.num(), &prio, &accept
		}
		chains[ch.name] = c.AddChain(nc)
	}
	for _, ch := range rs.chains {
		for _, r := range ch.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: chains[ch.name], Exprs: r.exprs()})
		}
	}
	return nil
}

// errNoTable is returned by readTable when shunt's table does not exist.
var errNoTable = errors.New("table inet " + TableName + " does not exist")

func isNotExist(err error) bool { return errors.Is(err, unix.ENOENT) }

// snapshot is shunt's table as read from the kernel, reduced to lines that
// compare equal exactly when the table is the same: chains with their
// hooks, each rule's expressions (by digest), each set's type and elements.
type snapshot struct {
	sets   []string
	chains []chainSnap
}

type chainSnap struct {
	name, line string
	rules      []ruleRef
}

type ruleRef struct {
	digest string
	handle uint64
}

func digest(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return "unmarshalable: " + err.Error()
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// readTable reads shunt's table; errNoTable when it is absent.
func readTable(c *nftables.Conn) (*snapshot, error) {
	t := table()
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if isNotExist(err) {
			return nil, errNoTable
		}
		return nil, fmt.Errorf("read table inet %s: %w", TableName, err)
	}
	snap := &snapshot{}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("read sets of table inet %s: %w", TableName, err)
	}
	slices.SortFunc(sets, func(a, b *nftables.Set) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range sets {
		kind := kindOf(s)
		flags := ""
		if s.Interval {
			flags = " flags interval"
		}
		snap.sets = append(snap.sets, fmt.Sprintf("set %s type %s%s", s.Name, s.KeyType.Name, flags))
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("read elements of set %s: %w", s.Name, err)
		}
		texts := make([]string, len(elems))
		for i, e := range elems {
			texts[i] = elementText(kind, e)
		}
		// The kernel lists interval elements in its tree's order; the set
		// is the same whatever the order.
		slices.Sort(texts)
		for _, tx := range texts {
			snap.sets = append(snap.sets, fmt.Sprintf("set %s element %s", s.Name, tx))
		}
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("read chains of table inet %s: %w", TableName, err)
	}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		line := "chain " + ch.Name
		if ch.Hooknum != nil {
			pol := "accept"
			if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
				pol = "drop"
			}
			prio := 0
			if ch.Priority != nil {
				prio = int(*ch.Priority)
			}
			line += fmt.Sprintf(" type %s hook %s priority %d policy %s", ch.Type, hookName(*ch.Hooknum), prio, pol)
		}
		cs := chainSnap{name: ch.Name, line: line}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("read rules of chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			cs.rules = append(cs.rules, ruleRef{digest: digest(r.Exprs), handle: r.Handle})
		}
		snap.chains = append(snap.chains, cs)
	}
	return snap, nil
}

// record prints the snapshot one line per set element, chain and rule. A
// rule is named by its text, which textOf finds from its digest, and the
// digest stays on the line: a rule someone changed no longer compares equal.
func (s *snapshot) record(textOf func(digest string) (string, bool)) string {
	var b strings.Builder
	for _, l := range s.sets {
		b.WriteString(l + "\n")
	}
	for _, c := range s.chains {
		b.WriteString(c.line + "\n")
		for _, r := range c.rules {
			text, ok := textOf(r.digest)
			if !ok {
				text = fmt.Sprintf("(a rule shunt did not write, handle %d)", r.handle)
			}
			fmt.Fprintf(&b, "rule %s: %s #%s\n", c.name, text, r.digest)
		}
	}
	return b.String()
}

// texts maps the digests of a freshly written table's rules to their text,
// pairing the rules read back with the rules sent, chain by chain.
func (s *snapshot) texts(rs *Ruleset) map[string]string {
	sent := map[string][]rule{}
	for _, c := range rs.chains {
		sent[c.name] = c.rules
	}
	out := map[string]string{}
	for _, c := range s.chains {
		want := sent[c.name]
		if len(want) != len(c.rules) {
			continue
		}
		for i, r := range c.rules {
			out[r.digest] = want[i].String()
		}
	}
	return out
}

func kindOf(s *nftables.Set) setKind {
	switch s.KeyType.Name {
	case nftables.TypeIPAddr.Name:
		return kindAddr4
	case nftables.TypeIP6Addr.Name:
		return kindAddr6
	case nftables.TypeInetService.Name:
		return kindPort
	}
	if strings.HasPrefix(s.KeyType.Name, nftables.TypeIP6Addr.Name) {
		return kindEndpoint6
	}
	return kindEndpoint4
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return fmt.Sprint(uint32(h))
}

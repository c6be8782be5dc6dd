package nftables

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/internal/digest"
	"github.com/shunt-dev/shunt/redirect"
)

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// dial opens a netlink connection to nf_tables in the namespace at path ("":
// the current one). The namespace is entered by the socket, not by the
// calling thread.
func dial(path string) (*nftables.Conn, func(), error) {
	// One socket for every request of the operation: each new socket in
	// another namespace costs a thread entering it.
	if path == "" {
		c, err := nftables.New(nftables.AsLasting(), ackOptions())
		if err != nil {
			return nil, nil, fmt.Errorf("open nftables netlink socket: %w", err)
		}
		return c, func() { _ = c.CloseLasting() }, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("netns %s: %w", path, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting(), ackOptions())
	f.Close() // the socket, made, lives in the namespace on its own
	if err != nil {
		return nil, nil, fmt.Errorf("open nftables netlink socket in %s: %w", path, err)
	}
	return c, func() { _ = c.CloseLasting() }, nil
}

// ackOptions keep the kernel's acknowledgements of a whole table's batch
// (one per message) within the socket's receive buffer: without
// NETLINK_CAP_ACK each one carries a copy of its request, and a table with
// lockdown overflowed the default buffer (ENOBUFS, batch not confirmed).
func ackOptions() nftables.ConnOption {
	return nftables.WithSockOptions(func(c *netlink.Conn) error {
		if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
			return fmt.Errorf("set NETLINK_CAP_ACK: %w", err)
		}
		return c.SetReadBuffer(4 << 20) // capped by net.core.rmem_max
	})
}

// queueTable adds to c's batch the messages that make shunt's table equal
// rs: the table is created if absent, deleted, and written anew, so the
// kernel applies the whole change or none of it.
func queueTable(c *batch, rs *Ruleset) error {
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	return queueContents(c, t, rs)
}

// queueFreshTable adds to c's batch the messages that create shunt's
// table as rs, for a namespace known not to have it.
func queueFreshTable(c *batch, rs *Ruleset) error {
	t := table()
	c.AddTable(t)
	return queueContents(c, t, rs)
}

// tableAbsent reports whether shunt's table is missing, with one request.
func tableAbsent(c *nftables.Conn) (bool, error) {
	_, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if isNotExist(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read table inet %s: %w", TableName, err)
	}
	return false, nil
}

func queueContents(c *batch, t *nftables.Table, rs *Ruleset) error {
	for _, s := range rs.sets {
		ns := &nftables.Set{Table: t, ID: s.id, Name: s.name, KeyType: s.kind.keyType(), Interval: s.interval,
			Concatenation: s.kind == kindEndpoint4 || s.kind == kindEndpoint6}
		if err := c.AddSet(ns, s.elems); err != nil {
			return fmt.Errorf("set %s: %w", s.name, err)
		}
	}
	for _, ch := range rs.chains {
		nc := &nftables.Chain{Name: ch.name, Table: t}
		if h := ch.base; h != nil {
			accept := nftables.ChainPolicyAccept
			prio := nftables.ChainPriority(h.priority)
			nc.Type, nc.Hooknum, nc.Priority, nc.Policy = h.typ, h.num(), &prio, &accept
		}
		c.AddChain(nc)
	}
	c.viaLibrary = c.viaLibrary || !rs.encodable()
	for _, ch := range rs.chains {
		for _, r := range ch.rules {
			if err := c.addRule(t, ch.name, r.exprs()); err != nil {
				return err
			}
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
	sets   []setSnap
	chains []chainSnap
}

// setSnap is one set: its declaration and its elements.
type setSnap struct {
	name, decl string
	kind       setKind
	elems      []nftables.SetElement
}

// line is the set's line in a record: its declaration, size and a digest
// of its elements (a record stays small however large the sets are).
func (s setSnap) line() string {
	return fmt.Sprintf("set %s elements %d #%016x", s.decl, len(s.elems), elementsSum(s.elems))
}

// elementsSum digests elements whatever their order (the kernel lists an
// interval set in its tree's order): the sum of each element's hash.
func elementsSum(elems []nftables.SetElement) uint64 {
	var sum uint64
	for _, e := range elems {
		h := fnv.New64a()
		h.Write(e.Key)
		if e.IntervalEnd {
			h.Write([]byte{1})
		} else {
			h.Write([]byte{0})
		}
		sum += h.Sum64()
	}
	return sum
}

// texts prints the elements, sorted.
func (s setSnap) texts() []string {
	out := make([]string, len(s.elems))
	for i, e := range s.elems {
		out[i] = elementText(s.kind, e)
	}
	slices.Sort(out)
	return out
}

// sentSets is what the record's set lines are once rs is in the kernel: the
// kernel lists an interval set's elements as they were sent.
func sentSets(rs *Ruleset) []setSnap {
	var out []setSnap
	for _, s := range rs.sets {
		out = append(out, s.snap())
	}
	slices.SortFunc(out, func(a, b setSnap) int { return strings.Compare(a.name, b.name) })
	return out
}

func (s *set) snap() setSnap {
	return setSnap{name: s.name, decl: setDecl(s.name, s.kind.keyType().Name, s.interval), kind: s.kind, elems: s.elems}
}

func setDecl(name, typ string, interval bool) string {
	d := name + " type " + typ
	if interval {
		d += " flags interval"
	}
	return d
}

type chainSnap struct {
	name, line string
	rules      []ruleRef
}

type ruleRef struct {
	digest string
	handle uint64
}

// legacyDigest is the digest earlier builds recorded for a rule: its
// expressions as the netlink library decodes them, as JSON.
func legacyDigest(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return "unmarshalable: " + err.Error()
	}
	h := digest.SHA256(b)
	return hex.EncodeToString(h[:8])
}

// readHow says what readTable may take as known rather than read.
type readHow struct {
	// sets, when not nil, are the table's sets.
	sets []setSnap
	// asSent, when not nil, is the table just written by the only
	// batch committed since it was found absent, or since the whole
	// table was replaced: it exists and its chains are asSent's, so
	// only its rules are read. sets must then be given too.
	asSent *Ruleset
	// legacy digests the rules as records of earlier builds did.
	legacy bool
	// rules, when not nil, are the table's rules as the kernel
	// listed them (echoed by the batch that wrote them).
	rules []dumpedRule
}

// readTable reads shunt's table; errNoTable when it is absent. The rules
// come in one dump over g.
func readTable(c *nftables.Conn, g *genConn, how readHow) (*snapshot, error) {
	if g == nil {
		return nil, errors.New("read table inet " + TableName + ": no netlink socket to list its rules")
	}
	snap := &snapshot{sets: how.sets}
	if rs := how.asSent; rs != nil {
		snap.chains = rs.chainSnaps()
	} else {
		var err error
		if snap.chains, err = readChains(c); err != nil {
			return nil, err
		}
	}
	if snap.sets == nil {
		t := table()
		live, err := c.GetSets(t)
		if err != nil {
			return nil, fmt.Errorf("read sets of table inet %s: %w", TableName, err)
		}
		slices.SortFunc(live, func(a, b *nftables.Set) int { return strings.Compare(a.Name, b.Name) })
		for _, s := range live {
			kind := kindOf(s)
			elems, err := c.GetSetElements(s)
			if err != nil {
				return nil, fmt.Errorf("read elements of set %s: %w", s.Name, err)
			}
			snap.sets = append(snap.sets, setSnap{name: s.Name, decl: setDecl(s.Name, s.KeyType.Name, s.Interval), kind: kind, elems: elems})
		}
	}
	rules := how.rules
	if rules == nil {
		var err error
		if rules, err = g.rules(); err != nil {
			return nil, err
		}
	}
	byChain := map[string][]ruleRef{}
	for _, r := range rules {
		d, err := r.digest(how.legacy)
		if err != nil {
			return nil, fmt.Errorf("read table inet %s: %w", TableName, err)
		}
		byChain[r.chain] = append(byChain[r.chain], ruleRef{digest: d, handle: r.handle})
	}
	for i := range snap.chains {
		snap.chains[i].rules = byChain[snap.chains[i].name]
	}
	return snap, nil
}

// readChains lists the table's chains with their hooks, in the kernel's
// order; errNoTable when the table is absent.
func readChains(c *nftables.Conn) ([]chainSnap, error) {
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if isNotExist(err) {
			return nil, errNoTable
		}
		return nil, fmt.Errorf("read table inet %s: %w", TableName, err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("read chains of table inet %s: %w", TableName, err)
	}
	var out []chainSnap
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		var h *chainHook
		if ch.Hooknum != nil {
			h = &chainHook{typ: ch.Type, hook: hookName(*ch.Hooknum), policy: "accept"}
			if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
				h.policy = "drop"
			}
			if ch.Priority != nil {
				h.priority = int(*ch.Priority)
			}
		}
		out = append(out, chainSnap{name: ch.Name, line: chainLine(ch.Name, h)})
	}
	return out, nil
}

// chainHook is a base chain's hook as a record shows it.
type chainHook struct {
	typ      nftables.ChainType
	hook     string
	priority int
	policy   string
}

func chainLine(name string, h *chainHook) string {
	line := "chain " + name
	if h != nil {
		line += fmt.Sprintf(" type %s hook %s priority %d policy %s", h.typ, h.hook, h.priority, h.policy)
	}
	return line
}

// ruleCount is how many rules rs holds.
func (rs *Ruleset) ruleCount() int {
	n := 0
	for _, c := range rs.chains {
		n += len(c.rules)
	}
	return n
}

// chainSnaps are rs's chains as the kernel lists them once rs is
// written: in the order sent, each base chain with the accept policy
// queueContents gives it.
func (rs *Ruleset) chainSnaps() []chainSnap {
	out := make([]chainSnap, 0, len(rs.chains))
	for _, c := range rs.chains {
		var h *chainHook
		if b := c.base; b != nil {
			h = &chainHook{typ: b.typ, hook: b.hook, priority: int(b.priority), policy: "accept"}
		}
		out = append(out, chainSnap{name: c.name, line: chainLine(c.name, h)})
	}
	return out
}

// legacyRecord reports whether a record's rules carry the digests of
// earlier builds, which the live rules must then be digested as to
// compare.
func legacyRecord(st *redirect.State) bool {
	if st == nil {
		return false
	}
	for _, l := range strings.Split(st.Applied["inet"], "\n") {
		if !strings.HasPrefix(l, "rule ") {
			continue
		}
		i := strings.LastIndex(l, " #")
		return i >= 0 && len(l)-i-2 == 16
	}
	return false
}

// record prints the snapshot one line per set element, chain and rule. A
// rule is named by its text, which textOf finds from its digest, and the
// digest stays on the line: a rule someone changed no longer compares equal.
func (s *snapshot) record(textOf func(chain, digest string) (string, bool)) string {
	var b strings.Builder
	for _, st := range s.sets {
		b.WriteString(st.line() + "\n")
	}
	for _, c := range s.chains {
		b.WriteString(c.line + "\n")
		for _, r := range c.rules {
			text, ok := textOf(c.name, r.digest)
			if !ok {
				text = fmt.Sprintf("(a rule shunt did not write, handle %d)", r.handle)
			}
			fmt.Fprintf(&b, "rule %s: %s #%s\n", c.name, text, r.digest)
		}
	}
	return b.String()
}

// texts maps the chain and digest of a freshly written table's rules to their text,
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
			out[c.name+" "+r.digest] = want[i].String()
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

// genConn is a plain netlink socket to nf_tables, which sends shunt's
// batches (applyBatch), lists its rules in one dump, and asks for the
// namespace's nftables ruleset generation, which every committed batch, of
// any table, increments: equal to the one seen right after shunt's last
// change, it proves nothing changed since.
type genConn struct{ conn *netlink.Conn }

func dialGen(path string) (*genConn, error) {
	cfg := &netlink.Config{}
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("netns %s: %w", path, err)
		}
		defer f.Close()
		cfg.NetNS = int(f.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("read nftables generation: %w", err)
	}
	// Batches go over this socket too: an error about a refused
	// message then carries no copy of it. (Extended acknowledgements
	// as well make the netlink library misread capped errors.)
	_ = conn.SetOption(netlink.CapAcknowledge, true)
	return &genConn{conn: conn}, nil
}

func (g *genConn) Close() {
	if g != nil {
		g.conn.Close()
	}
}

func (g *genConn) get() (uint32, error) {
	if g == nil {
		return 0, errors.New("no generation socket")
	}
	msgs, err := g.conn.Execute(genRequest())
	if err != nil {
		return 0, fmt.Errorf("read nftables generation: %w", err)
	}
	return genOf(msgs)
}

// genOf finds the generation in the kernel's answer to a GETGEN request.
func genOf(msgs []netlink.Message) (uint32, error) {
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("read nftables generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("read nftables generation: no generation in the kernel's answer")
}

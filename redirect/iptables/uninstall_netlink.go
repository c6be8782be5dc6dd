package iptables

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
)

// Removing shunt's rules from the tables iptables-nft keeps in nf_tables
// through iptables-nft-restore costs one process and one commit per family,
// and every commit that deletes something leaves the kernel deferred
// clean-up (an RCU grace period, in a work item): closing the netfilter
// netlink socket waits for it (nft_rcv_nl_event flushes that work). The
// restores therefore wait for it once per family. Deleting the same rules
// and chains in one nf_tables transaction for both families costs no process
// and one grace period.
//
// Only deletions are sent: iptables-nft stores rules with xtables compat
// expressions, and a rule written over netlink in a form it does not make
// would be one it cannot print back. Rules are deleted by handle, so what is
// deleted is the rule that was read, byte for byte; anything not recognised
// as shunt's sends the caller back to the restore path.

// errNetlinkMismatch marks tables holding something the netlink removal
// does not recognise as shunt's: the restore path, which reads the rules as
// iptables prints them, handles it.
var errNetlinkMismatch = errors.New("not removable over netlink")

func nftFamily(f family) nftables.TableFamily {
	if f == ipv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// netlinkRemoval is one transaction: the jumps to delete by handle, and
// shunt's chains, flushed then deleted.
type netlinkRemoval struct {
	jumps  []*nftables.Rule
	chains []*nftables.Chain
}

func (r *netlinkRemoval) empty() bool { return len(r.jumps) == 0 && len(r.chains) == 0 }

// uninstallNetlink removes shunt's rules from the iptables-nft tables of the
// given families in one nf_tables transaction. It must run on a thread in
// the target namespace. removed reports whether there was anything to
// remove. On any error nothing was changed: either nothing was sent, or the
// kernel refused the batch, which it then applies not at all.
func uninstallNetlink(ctx context.Context, fams []family) (removed bool, err error) {
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return false, fmt.Errorf("nftables netlink: %w", err)
	}
	// Closing the socket is where the process waits for the kernel's
	// deferred clean-up of the deleted rules.
	defer conn.CloseLasting()
	var rm netlinkRemoval
	for _, f := range fams {
		if err := rm.plan(conn, f); err != nil {
			return false, err
		}
	}
	if rm.empty() {
		return false, nil
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	for _, r := range rm.jumps {
		if err := conn.DelRule(r); err != nil {
			return false, fmt.Errorf("delete rule %d of %s %s: %w", r.Handle, r.Table.Name, r.Chain.Name, err)
		}
	}
	// Flushing every chain first drops the jumps between shunt's chains, so
	// that each one is unreferenced when it is deleted.
	for _, c := range rm.chains {
		conn.FlushChain(c)
	}
	for _, c := range rm.chains {
		conn.DelChain(c)
	}
	if err := conn.Flush(); err != nil {
		return false, fmt.Errorf("commit the removal of %d rules and %d chains: %w", len(rm.jumps), len(rm.chains), err)
	}
	return true, nil
}

// plan adds what is shunt's in one family's iptables-nft tables: its chains
// (named with ChainPrefix) and, in the built-in chains of the tables holding
// them, the rules marked with Marker that jump to one of them.
func (rm *netlinkRemoval) plan(conn *nftables.Conn, f family) error {
	chains, err := conn.ListChainsOfTableFamily(nftFamily(f))
	if err != nil {
		return fmt.Errorf("list %s chains: %w", f, err)
	}
	byTable := map[string][]*nftables.Chain{}
	for _, c := range chains {
		if c.Table != nil && xtablesName(c.Table.Name) {
			byTable[c.Table.Name] = append(byTable[c.Table.Name], c)
		}
	}
	tables := make([]string, 0, len(byTable))
	for t := range byTable {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	for _, table := range tables {
		shunt := map[string]*nftables.Chain{}
		var builtin []*nftables.Chain
		for _, c := range byTable[table] {
			switch {
			case strings.HasPrefix(c.Name, ChainPrefix):
				if c.Hooknum != nil {
					return fmt.Errorf("%s %s: %s is a base chain: %w", f, table, c.Name, errNetlinkMismatch)
				}
				shunt[c.Name] = c
			case c.Hooknum != nil:
				builtin = append(builtin, c)
			}
		}
		if len(shunt) == 0 {
			// Every jump needs its target: without shunt's chains
			// the table holds no jump of shunt's.
			continue
		}
		for _, c := range builtin {
			rules, err := conn.GetRules(c.Table, c)
			if err != nil {
				return fmt.Errorf("list %s %s %s rules: %w", f, table, c.Name, err)
			}
			for _, r := range rules {
				comment := ruleComment(r)
				target := shuntTarget(r)
				switch {
				case comment == "" && target == "":
					// Somebody else's rule.
				case comment == Marker && shunt[target] != nil && r.Handle != 0:
					rm.jumps = append(rm.jumps, &nftables.Rule{Table: c.Table, Chain: c, Handle: r.Handle})
				default:
					return fmt.Errorf("%s %s %s: rule %d (comment %q, jump to %q) is not a jump of shunt's: %w",
						f, table, c.Name, r.Handle, comment, target, errNetlinkMismatch)
				}
			}
		}
		names := make([]string, 0, len(shunt))
		for n := range shunt {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			rm.chains = append(rm.chains, shunt[n])
		}
	}
	return nil
}

// ruleComment returns the rule's comment when it is shunt's marker or could
// be taken for it (it starts with it, as iptables-save's reader accepts), or
// "". iptables-nft keeps `-m comment` as an xtables comment match; nft keeps
// comments in the rule's user data: both are read.
func ruleComment(r *nftables.Rule) string {
	var comments []string
	for _, e := range r.Exprs {
		if m, ok := e.(*expr.Match); ok && m.Name == "comment" {
			if c, ok := m.Info.(*xt.Comment); ok {
				s, _, _ := strings.Cut(string(*c), "\x00")
				comments = append(comments, s)
			}
		}
	}
	if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		s, _, _ = strings.Cut(s, "\x00")
		comments = append(comments, s)
	}
	for _, c := range comments {
		if strings.HasPrefix(c, Marker) {
			return c
		}
	}
	return ""
}

// shuntTarget returns the shunt chain the rule jumps (or goes) to, or "".
func shuntTarget(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && strings.HasPrefix(v.Chain, ChainPrefix) {
			return v.Chain
		}
	}
	return ""
}

// uninstallOverNetlink removes the rules of the iptables-nft variants among
// vs in one transaction and returns the variants left to the restore path:
// the legacy ones, and the nft ones too when the netlink removal could not
// be used (it then changed nothing). found reports whether it removed
// anything.
func (e *Engine) uninstallOverNetlink(ctx context.Context, vs []variant) (rest []variant, found bool) {
	var fams []family
	for _, v := range vs {
		// Programs replaced by the caller (tests) are what it wants
		// used.
		if v.b == NFT && e.opts.CommandsFor == nil {
			fams = append(fams, v.f)
		}
	}
	if len(fams) == 0 {
		return vs, false
	}
	var err error
	if ierr := e.inNetns(func() error { found, err = uninstallNetlink(ctx, fams); return nil }); ierr != nil {
		err = ierr
	}
	if err != nil {
		e.log.Debug("uninstall over netlink not used; using iptables-restore", "err", err)
		return vs, false
	}
	e.log.Debug("uninstalled over netlink", "families", fams, "found", found)
	for _, v := range vs {
		if v.b != NFT {
			rest = append(rest, v)
		}
	}
	return rest, found
}

package nftables

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
)

// Expressions of the optional capture features (redirect.Plan.Features),
// each compiled as nft compiles its text.

// prefix matches one CIDR: as nft does, a byte-aligned prefix loads only
// its bytes, any other masks the whole address.
func prefix(f fam, src bool, p netip.Prefix) term {
	p = p.Masked()
	a := f.addrBytes(p.Addr())
	bits := p.Bits()
	if p.Addr().Is4In6() && !f.v6 {
		bits -= 96
	}
	ex := nfprotoDep(f)
	load := addrPayload(f, src)
	if bits > 0 && bits%8 == 0 {
		load.Len = uint32(bits / 8)
		ex = append(ex, load, cmpEq(a[:bits/8]))
	} else {
		mask := make([]byte, len(a))
		for i := 0; i < bits; i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		ex = append(ex, load,
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(a)), Mask: mask, Xor: make([]byte, len(a))},
			cmpEq(a))
	}
	shown := netip.PrefixFrom(addrOf(a), bits)
	return term{fmt.Sprintf("%s %s %s", f.keyword(), dirWord(src), shown), ex}
}

// logged inserts, when the plan logs packets, a log statement before the
// last term of a rule (its action): the packet is logged by the rule that
// acts on it, prefixed with what that rule does.
func logged(l *redirect.PacketLog, what string, terms ...term) []term {
	if l == nil || len(terms) == 0 {
		return terms
	}
	n := len(terms) - 1
	out := append(append(append([]term(nil), terms[:n]...), logTerm(l, what)), terms[n])
	return out
}

// logTerm logs to an NFLOG group (nfnetlink_log), or to the kernel log
// with iptables LOG's "prefix: " form, the kernel log having no field
// separator of its own.
func logTerm(l *redirect.PacketLog, what string) term {
	prefix := "shunt-" + what
	if l.Target == "kernel" {
		prefix += ": "
		return term{fmt.Sprintf("log prefix %q", prefix), []expr.Any{&expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte(prefix)}}}
	}
	return term{fmt.Sprintf("log prefix %q group %d", prefix, l.Group), []expr.Any{
		&expr.Log{Key: 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP, Group: l.Group, Data: []byte(prefix)},
	}}
}

// ctInvalid matches packets conntrack could not place in a connection.
func ctInvalid() term { return ctBits(expr.CtKeySTATE, "ct state invalid", 0x1) } // NF_CT_STATE_INVALID_BIT

// tproxyTo hands the packet to the local socket listening on port (the
// packet's own destination address), marks it so that the policy route
// delivers it locally, and accepts it: iptables' TPROXY target with
// --on-ip 0.0.0.0 (::) and --tproxy-mark MARK/0xffffffff.
func tproxyTo(f fam, port uint16, m uint32) term {
	return term{fmt.Sprintf("tproxy %s to :%d meta mark set 0x%08x accept", f.keyword(), port, m), []expr.Any{
		&expr.Immediate{Register: 1, Data: be16(port)},
		&expr.TProxy{Family: f.nfproto(), TableFamily: unix.NFPROTO_INET, RegPort: 1},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(m)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}}
}

// ctMarkSave copies the packet mark onto its connection (CONNMARK
// --save-mark with full masks).
func ctMarkSave() term {
	return term{"ct mark set meta mark", []expr.Any{
		metaLoad(expr.MetaKeyMARK),
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}}
}

// ctMarkRestore copies the connection's mark onto the packet (CONNMARK
// --restore-mark with full masks).
func ctMarkRestore() term {
	return term{"meta mark set ct mark", []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}}
}

// ctMark matches the connection's mark.
func ctMark(m uint32) term {
	return term{fmt.Sprintf("ct mark 0x%08x", m), []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(m)},
	}}
}

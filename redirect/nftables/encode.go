package nftables

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// batch is what a change sends: the messages the netlink library encodes
// (the table, its sets and their elements, its chains), and the table's
// rules, which encodeRule writes itself and which follow them.
//
// The library encodes a rule attribute by attribute, each in a slice of
// its own (about 4,000 allocations for the default table, two thirds of
// the time a one-shot install spent building its batch); encodeRule
// appends the same bytes to one buffer. TestRuleEncodingIsTheLibrarys
// holds the two to the same bytes for every scenario.
type batch struct {
	*nftables.Conn
	rules []netlink.Message
	// viaLibrary sends the rules through the library too (the tests'
	// reference).
	viaLibrary bool
}

// addRule adds a rule of table t's chain to the batch.
func (b *batch) addRule(t *nftables.Table, chain string, exprs []expr.Any) error {
	if !b.viaLibrary {
		m, ok := encodeRule(t, chain, exprs)
		if !ok {
			return fmt.Errorf("rule of chain %s: an expression the rule encoder does not write (check with encodable first)", chain)
		}
		b.rules = append(b.rules, m)
		return nil
	}
	b.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: chain, Table: t}, Exprs: exprs})
	return nil
}

// encodable reports whether encodeRule writes every rule of rs; where it
// does not, the whole batch's rules go through the library, in order.
func (rs *Ruleset) encodable() bool {
	for _, c := range rs.chains {
		for _, r := range c.rules {
			for _, t := range r.terms {
				for _, e := range t.exprs {
					if exprName(e) == "" {
						return false
					}
				}
			}
		}
	}
	return true
}

// ruleFlags are the flags the library gives a rule it appends.
const ruleFlags = netlink.Request | netlink.Acknowledge | netlink.Create | unix.NLM_F_ECHO | unix.NLM_F_APPEND

// encodeRule writes the NEWRULE message appending exprs to table t's chain,
// as the library writes it; ok is false for an expression it does not know.
func encodeRule(t *nftables.Table, chain string, exprs []expr.Any) (m netlink.Message, ok bool) {
	w := attrWriter{b: make([]byte, 4, 64+64*len(exprs))}
	w.b[0], w.b[1] = byte(t.Family), unix.NFNETLINK_V0
	w.str(unix.NFTA_RULE_TABLE, t.Name)
	w.str(unix.NFTA_RULE_CHAIN, chain)
	list := w.open(unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS)
	for _, e := range exprs {
		elem := w.open(unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM)
		if !w.expr(e) {
			return m, false
		}
		w.close(elem)
	}
	w.close(list)
	return netlink.Message{
		Header: netlink.Header{Type: newRuleType, Flags: ruleFlags},
		Data:   w.b,
	}, true
}

// attrWriter appends netlink attributes to one buffer: a header (length
// and type, host byte order), the data, padding to four bytes.
type attrWriter struct{ b []byte }

func (w *attrWriter) bytes(typ uint16, data []byte) {
	w.b = binary.NativeEndian.AppendUint16(w.b, uint16(4+len(data)))
	w.b = binary.NativeEndian.AppendUint16(w.b, typ)
	w.b = append(w.b, data...)
	w.pad()
}

func (w *attrWriter) str(typ uint16, s string) {
	w.b = binary.NativeEndian.AppendUint16(w.b, uint16(4+len(s)+1))
	w.b = binary.NativeEndian.AppendUint16(w.b, typ)
	w.b = append(w.b, s...)
	w.b = append(w.b, 0)
	w.pad()
}

func (w *attrWriter) u32(typ uint16, v uint32) {
	w.b = binary.NativeEndian.AppendUint16(w.b, 8)
	w.b = binary.NativeEndian.AppendUint16(w.b, typ)
	w.b = binary.BigEndian.AppendUint32(w.b, v)
}

func (w *attrWriter) u16(typ uint16, v uint16) {
	w.b = binary.NativeEndian.AppendUint16(w.b, 6)
	w.b = binary.NativeEndian.AppendUint16(w.b, typ)
	w.b = binary.BigEndian.AppendUint16(w.b, v)
	w.pad()
}

func (w *attrWriter) pad() {
	for len(w.b)%4 != 0 {
		w.b = append(w.b, 0)
	}
}

// open starts a nested attribute; close sets its length.
func (w *attrWriter) open(typ uint16) int {
	at := len(w.b)
	w.b = binary.NativeEndian.AppendUint16(w.b, 0)
	w.b = binary.NativeEndian.AppendUint16(w.b, typ)
	return at
}

func (w *attrWriter) close(at int) {
	binary.NativeEndian.PutUint16(w.b[at:], uint16(len(w.b)-at))
}

// value writes data nested as an NFTA_DATA_VALUE.
func (w *attrWriter) value(typ uint16, data []byte) {
	n := w.open(unix.NLA_F_NESTED | typ)
	w.bytes(unix.NFTA_DATA_VALUE, data)
	w.close(n)
}

// exprName is the kernel's name of an expression encodeRule writes, ""
// for one it does not.
func exprName(e expr.Any) string {
	switch e.(type) {
	case *expr.Bitwise:
		return "bitwise"
	case *expr.Byteorder:
		return "byteorder"
	case *expr.Cmp:
		return "cmp"
	case *expr.Ct:
		return "ct"
	case *expr.Immediate, *expr.Verdict:
		return "immediate"
	case *expr.Log:
		return "log"
	case *expr.Lookup:
		return "lookup"
	case *expr.Meta:
		return "meta"
	case *expr.Payload:
		return "payload"
	case *expr.Redir:
		return "redir"
	case *expr.Reject:
		return "reject"
	case *expr.TProxy:
		return "tproxy"
	}
	return ""
}

// newRuleType is the NEWRULE message's type.
const newRuleType = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE)

// expr writes one expression's name and data, attribute for attribute as
// the library's marshalling of it (github.com/google/nftables/expr).
func (w *attrWriter) expr(e expr.Any) bool {
	name := exprName(e)
	if name == "" {
		return false
	}
	w.str(unix.NFTA_EXPR_NAME, name)
	data := w.open(unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA)
	switch e := e.(type) {
	case *expr.Bitwise:
		w.u32(unix.NFTA_BITWISE_SREG, e.SourceRegister)
		w.u32(unix.NFTA_BITWISE_DREG, e.DestRegister)
		w.u32(unix.NFTA_BITWISE_LEN, e.Len)
		w.value(unix.NFTA_BITWISE_MASK, e.Mask)
		w.value(unix.NFTA_BITWISE_XOR, e.Xor)
	case *expr.Byteorder:
		w.u32(unix.NFTA_BYTEORDER_SREG, e.SourceRegister)
		w.u32(unix.NFTA_BYTEORDER_DREG, e.DestRegister)
		w.u32(unix.NFTA_BYTEORDER_OP, uint32(e.Op))
		w.u32(unix.NFTA_BYTEORDER_LEN, e.Len)
		w.u32(unix.NFTA_BYTEORDER_SIZE, e.Size)
	case *expr.Cmp:
		w.u32(unix.NFTA_CMP_SREG, e.Register)
		w.u32(unix.NFTA_CMP_OP, uint32(e.Op))
		w.value(unix.NFTA_CMP_DATA, e.Data)
	case *expr.Ct:
		w.u32(unix.NFTA_CT_KEY, uint32(e.Key))
		if e.SourceRegister {
			w.u32(unix.NFTA_CT_SREG, e.Register)
		} else {
			w.u32(unix.NFTA_CT_DREG, e.Register)
		}
		switch e.Key {
		case expr.CtKeySRC, expr.CtKeyDST, expr.CtKeyPROTOSRC, expr.CtKeyPROTODST:
			w.u32(unix.NFTA_CT_DIRECTION, e.Direction)
		}
	case *expr.Immediate:
		w.u32(unix.NFTA_IMMEDIATE_DREG, e.Register)
		w.value(unix.NFTA_IMMEDIATE_DATA, e.Data)
	case *expr.Verdict:
		w.u32(unix.NFTA_IMMEDIATE_DREG, unix.NFT_REG_VERDICT)
		imm := w.open(unix.NLA_F_NESTED | unix.NFTA_IMMEDIATE_DATA)
		v := w.open(unix.NLA_F_NESTED | unix.NFTA_DATA_VERDICT)
		w.u32(unix.NFTA_VERDICT_CODE, uint32(e.Kind))
		if e.Chain != "" {
			w.str(unix.NFTA_VERDICT_CHAIN, e.Chain)
		}
		w.close(v)
		w.close(imm)
	case *expr.Log:
		if e.Key&(1<<unix.NFTA_LOG_GROUP) != 0 {
			w.u16(unix.NFTA_LOG_GROUP, e.Group)
		}
		if e.Key&(1<<unix.NFTA_LOG_PREFIX) != 0 {
			w.str(unix.NFTA_LOG_PREFIX, string(e.Data))
		}
		if e.Key&(1<<unix.NFTA_LOG_SNAPLEN) != 0 {
			w.u32(unix.NFTA_LOG_SNAPLEN, e.Snaplen)
		}
		if e.Key&(1<<unix.NFTA_LOG_QTHRESHOLD) != 0 {
			w.u16(unix.NFTA_LOG_QTHRESHOLD, e.QThreshold)
		}
		if e.Key&(1<<unix.NFTA_LOG_LEVEL) != 0 {
			w.u32(unix.NFTA_LOG_LEVEL, uint32(e.Level))
		}
		if e.Key&(1<<unix.NFTA_LOG_FLAGS) != 0 {
			w.u32(unix.NFTA_LOG_FLAGS, uint32(e.Flags))
		}
	case *expr.Lookup:
		if e.SourceRegister != 0 {
			w.u32(unix.NFTA_LOOKUP_SREG, e.SourceRegister)
		}
		if e.IsDestRegSet {
			w.u32(unix.NFTA_LOOKUP_DREG, e.DestRegister)
		}
		if e.Invert {
			w.u32(unix.NFTA_LOOKUP_FLAGS, unix.NFT_LOOKUP_F_INV)
		}
		w.str(unix.NFTA_LOOKUP_SET, e.SetName)
		w.u32(unix.NFTA_LOOKUP_SET_ID, e.SetID)
	case *expr.Meta:
		w.u32(unix.NFTA_META_KEY, uint32(e.Key))
		if e.SourceRegister {
			w.u32(unix.NFTA_META_SREG, e.Register)
		} else {
			w.u32(unix.NFTA_META_DREG, e.Register)
		}
	case *expr.Payload:
		if e.OperationType == expr.PayloadWrite {
			w.u32(unix.NFTA_PAYLOAD_SREG, e.SourceRegister)
		} else {
			w.u32(unix.NFTA_PAYLOAD_DREG, e.DestRegister)
		}
		w.u32(unix.NFTA_PAYLOAD_BASE, uint32(e.Base))
		w.u32(unix.NFTA_PAYLOAD_OFFSET, e.Offset)
		w.u32(unix.NFTA_PAYLOAD_LEN, e.Len)
		if e.CsumType > 0 {
			w.u32(unix.NFTA_PAYLOAD_CSUM_TYPE, uint32(e.CsumType))
			w.u32(unix.NFTA_PAYLOAD_CSUM_OFFSET, uint32(e.CsumOffset))
			if e.CsumFlags > 0 {
				w.u32(unix.NFTA_PAYLOAD_CSUM_FLAGS, e.CsumFlags)
			}
		}
	case *expr.Redir:
		if e.RegisterProtoMin > 0 {
			w.u32(unix.NFTA_REDIR_REG_PROTO_MIN, e.RegisterProtoMin)
		}
		if e.RegisterProtoMax > 0 {
			w.u32(unix.NFTA_REDIR_REG_PROTO_MAX, e.RegisterProtoMax)
		}
		if e.Flags > 0 {
			w.u32(unix.NFTA_REDIR_FLAGS, e.Flags)
		}
	case *expr.Reject:
		w.u32(unix.NFTA_REJECT_TYPE, e.Type)
		w.bytes(unix.NFTA_REJECT_ICMP_CODE, []byte{e.Code})
	case *expr.TProxy:
		w.u32(expr.NFTA_TPROXY_FAMILY, uint32(e.Family))
		w.u32(expr.NFTA_TPROXY_REG_PORT, e.RegPort)
		if e.RegAddr != 0 {
			w.u32(expr.NFTA_TPROXY_REG_ADDR, e.RegAddr)
		}
	}
	w.close(data)
	return true
}

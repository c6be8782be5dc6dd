package nftables

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/internal/digest"
)

// dumpedRule is one rule of shunt's table as the kernel lists it.
type dumpedRule struct {
	chain  string
	handle uint64
	// exprs is the rule's expression list as the kernel encoded it.
	exprs []byte
}

// digest names the rule's expressions in a record: a hash of the
// kernel's own encoding of them, so that any change to a rule, in an
// attribute the netlink library decodes or not, changes it. legacy gives
// the digest records of earlier builds hold instead (the library's
// decoding of the expressions, as JSON), so that a record written by one
// still compares equal to the rules it describes.
func (r dumpedRule) digest(legacy bool) (string, error) {
	if !legacy {
		h := digest.SHA256(r.exprs)
		return hex.EncodeToString(h[:digestBytes]), nil
	}
	exprs, err := decodeExprs(r.exprs)
	if err != nil {
		return "", fmt.Errorf("rule %d of chain %s: %w", r.handle, r.chain, err)
	}
	return legacyDigest(exprs), nil
}

// digestBytes is how much of a rule's hash its digest keeps: more than the
// 8 bytes of a legacy digest, which is how a record's scheme is told.
const digestBytes = 12

// rules lists every rule of shunt's table in one dump, chain by chain in
// the kernel's order. The netlink library asks chain by chain, a round
// trip each, which was most of reading a table back after an install.
func (g *genConn) rules() ([]dumpedRule, error) {
	if g == nil {
		return nil, fmt.Errorf("no netlink socket")
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	msgs, err := g.dump(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("list rules of table inet %s: %w", TableName, err)
	}
	out := make([]dumpedRule, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		r, err := decodeRule(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("list rules of table inet %s: %w", TableName, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func decodeRule(b []byte) (dumpedRule, error) {
	var r dumpedRule
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return r, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			r.chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			r.handle = ad.Uint64()
		case unix.NFTA_RULE_EXPRESSIONS:
			r.exprs = ad.Bytes()
		}
	}
	return r, ad.Err()
}

// decodeExprs decodes a rule's expression list into the values the
// netlink library's GetRules returns, as the legacy digest was taken.
// Expressions the library does not decode are left out, as it does.
func decodeExprs(b []byte) ([]expr.Any, error) {
	var out []expr.Any
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		ad.Do(func(b []byte) error {
			ed, err := netlink.NewAttributeDecoder(b)
			if err != nil {
				return err
			}
			ed.ByteOrder = binary.BigEndian
			var name string
			for ed.Next() {
				switch ed.Type() {
				case unix.NFTA_EXPR_NAME:
					name = ed.String()
					if name == "notrack" {
						out = append(out, &expr.Notrack{})
					}
				case unix.NFTA_EXPR_DATA:
					e := exprNamed(name)
					if e == nil {
						continue
					}
					data := ed.Bytes()
					if err := expr.Unmarshal(unix.NFPROTO_INET, data, e); err != nil {
						return fmt.Errorf("expression %s: %w", name, err)
					}
					// As the library does: an immediate that writes
					// nothing but the verdict register is a verdict.
					if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
						e = &expr.Verdict{}
						if err := expr.Unmarshal(unix.NFPROTO_INET, data, e); err != nil {
							return fmt.Errorf("expression %s: %w", name, err)
						}
					}
					out = append(out, e)
				}
			}
			return ed.Err()
		})
	}
	return out, ad.Err()
}

// exprNamed mirrors the netlink library's table of the expressions it
// decodes (expr.exprFromName in github.com/google/nftables v0.3.0).
func exprNamed(name string) expr.Any {
	switch name {
	case "ct":
		return &expr.Ct{}
	case "range":
		return &expr.Range{}
	case "meta":
		return &expr.Meta{}
	case "cmp":
		return &expr.Cmp{}
	case "counter":
		return &expr.Counter{}
	case "objref":
		return &expr.Objref{}
	case "payload":
		return &expr.Payload{}
	case "lookup":
		return &expr.Lookup{}
	case "immediate":
		return &expr.Immediate{}
	case "bitwise":
		return &expr.Bitwise{}
	case "redir":
		return &expr.Redir{}
	case "nat":
		return &expr.NAT{}
	case "limit":
		return &expr.Limit{}
	case "quota":
		return &expr.Quota{}
	case "dynset":
		return &expr.Dynset{}
	case "log":
		return &expr.Log{}
	case "exthdr":
		return &expr.Exthdr{}
	case "match":
		return &expr.Match{}
	case "target":
		return &expr.Target{}
	case "connlimit":
		return &expr.Connlimit{}
	case "queue":
		return &expr.Queue{}
	case "flow_offload":
		return &expr.FlowOffload{}
	case "reject":
		return &expr.Reject{}
	case "masq":
		return &expr.Masq{}
	case "hash":
		return &expr.Hash{}
	case "cthelper":
		return &expr.CtHelper{}
	case "synproxy":
		return &expr.SynProxy{}
	case "ctexpect":
		return &expr.CtExpect{}
	case "secmark":
		return &expr.SecMark{}
	case "cttimeout":
		return &expr.CtTimeout{}
	case "fib":
		return &expr.Fib{}
	case "numgen":
		return &expr.Numgen{}
	}
	return nil
}

// dumpBuffer is the receive buffer of a dump. The kernel sizes each part
// of a dump to the largest buffer the socket has received into (up to
// 32 KiB), so a buffer this large gets a table's rules in one or two
// parts; the netlink library first peeks at each part's size with an
// empty buffer, which holds the parts to a page each: for the default
// table, 14 system calls instead of 2.
const dumpBuffer = 64 << 10

// errDumpInterrupted: the ruleset changed while it was being dumped.
var errDumpInterrupted = errors.New("the ruleset changed during the dump")

// dump sends req, a dump request, and returns the messages of its answer.
// A dump the kernel marks interrupted (a commit came in between its
// parts) is asked for again, a few times.
func (g *genConn) dump(req netlink.Message) ([]netlink.Message, error) {
	var err error
	for range 3 {
		var msgs []netlink.Message
		if msgs, err = g.dumpOnce(req); !errors.Is(err, errDumpInterrupted) {
			return msgs, err
		}
	}
	return nil, err
}

func (g *genConn) dumpOnce(req netlink.Message) ([]netlink.Message, error) {
	rc, err := g.conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	if err := g.conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	defer g.conn.SetReadDeadline(time.Time{})
	sent, err := g.conn.Send(req)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, dumpBuffer)
	var out []netlink.Message
	interrupted := false
	for {
		n, err, rerr := recvInto(rc, buf)
		if err != nil {
			return nil, err
		}
		if rerr != nil {
			return nil, rerr
		}
		parts, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range parts {
			if m.Header.Seq != sent.Header.Sequence {
				continue // an answer to an earlier request
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data)); code < 0 {
						return nil, syscall.Errno(-code)
					}
				}
				if interrupted {
					return nil, errDumpInterrupted
				}
				return out, nil
			}
			out = append(out, netlink.Message{
				Header: netlink.Header{Length: m.Header.Len, Type: netlink.HeaderType(m.Header.Type), Flags: netlink.HeaderFlags(m.Header.Flags), Sequence: m.Header.Seq, PID: m.Header.Pid},
				Data:   slices.Clone(m.Data),
			})
		}
	}
}

// recvInto reads one datagram of the netlink socket rc into buf, waiting
// through the netpoller (and the connection's read deadline) while there is
// none: err is the wait's failure, rerr the receive's.
func recvInto(rc syscall.RawConn, buf []byte) (n int, err, rerr error) {
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
		return rerr != unix.EAGAIN && rerr != unix.EINTR
	})
	return n, err, rerr
}

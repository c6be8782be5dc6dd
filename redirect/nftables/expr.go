package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// term is one piece of a rule: its nft(8) text and the expressions nft
// would compile it to. A rule's text and its netlink form are built from the
// same terms, so --dry-run prints exactly what is sent.
type term struct {
	text  string
	exprs []expr.Any
}

// fam is the IP family a chain of the inet table serves.
type fam struct{ v6 bool }

var (
	v4 = fam{false}
	v6 = fam{true}
)

func (f fam) suffix() string {
	if f.v6 {
		return "6"
	}
	return "4"
}

func (f fam) label() string {
	if f.v6 {
		return "ipv6"
	}
	return "ipv4"
}

func (f fam) keyword() string {
	if f.v6 {
		return "ip6"
	}
	return "ip"
}

func (f fam) nfproto() byte {
	if f.v6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func (f fam) addrLen() uint32 {
	if f.v6 {
		return 16
	}
	return 4
}

// addrOffset is where the source or destination address sits in the
// network header.
func (f fam) addrOffset(src bool) uint32 {
	switch {
	case f.v6 && src:
		return 8
	case f.v6:
		return 24
	case src:
		return 12
	default:
		return 16
	}
}

func (f fam) addrBytes(a netip.Addr) []byte {
	if f.v6 {
		b := a.As16()
		return b[:]
	}
	b := a.Unmap().As4()
	return b[:]
}

func cmpEq(data []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }

func metaLoad(k expr.MetaKey) *expr.Meta { return &expr.Meta{Key: k, Register: 1} }

// nfprotoDep is the dependency nft adds before an ip or ip6 match in an
// inet table; it is not printed.
func nfprotoDep(f fam) []expr.Any {
	return []expr.Any{metaLoad(expr.MetaKeyNFPROTO), cmpEq([]byte{f.nfproto()})}
}

func metaNfproto(f fam) term {
	return term{"meta nfproto " + f.label(), nfprotoDep(f)}
}

func protoNum(proto string) byte {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func l4dep(proto string) []expr.Any {
	return []expr.Any{metaLoad(expr.MetaKeyL4PROTO), cmpEq([]byte{protoNum(proto)})}
}

func l4proto(proto string) term { return term{"meta l4proto " + proto, l4dep(proto)} }

// ifname matches the incoming (iif) or outgoing (oif) interface by name,
// so that an interface created later still matches. A trailing "+" is
// iptables' wildcard and nft's "*".
func ifname(in bool, name string) term {
	key, kw := expr.MetaKeyOIFNAME, "oifname"
	if in {
		key, kw = expr.MetaKeyIIFNAME, "iifname"
	}
	var data []byte
	shown := name
	if p, ok := strings.CutSuffix(name, "+"); ok {
		data = []byte(p)
		shown = p + "*"
	} else {
		data = make([]byte, unix.IFNAMSIZ)
		copy(data, name)
	}
	return term{fmt.Sprintf("%s %q", kw, shown), []expr.Any{metaLoad(key), cmpEq(data)}}
}

func addrPayload(f fam, src bool) *expr.Payload {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.addrOffset(src), Len: f.addrLen()}
}

func dirWord(src bool) string {
	if src {
		return "saddr"
	}
	return "daddr"
}

// addr matches one address; neq inverts the match.
func addr(f fam, src, neq bool, a netip.Addr) term {
	op, shown := expr.CmpOpEq, ""
	if neq {
		op, shown = expr.CmpOpNeq, "!= "
	}
	ex := append(nfprotoDep(f), addrPayload(f, src), &expr.Cmp{Op: op, Register: 1, Data: f.addrBytes(a)})
	return term{fmt.Sprintf("%s %s %s%s", f.keyword(), dirWord(src), shown, a.Unmap()), ex}
}

func lookup(s *set) *expr.Lookup {
	return &expr.Lookup{SourceRegister: 1, SetName: s.name, SetID: s.id}
}

// addrIn matches addresses in a set.
func addrIn(f fam, src bool, s *set) term {
	ex := append(nfprotoDep(f), addrPayload(f, src), lookup(s))
	return term{fmt.Sprintf("%s %s @%s", f.keyword(), dirWord(src), s.name), ex}
}

func portPayload(dst bool, reg uint32) *expr.Payload {
	off := uint32(0)
	if dst {
		off = 2
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2}
}

func portWord(dst bool) string {
	if dst {
		return "dport"
	}
	return "sport"
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// port matches one port or a range.
func port(proto string, dst bool, r portRange) term {
	ex := append(l4dep(proto), portPayload(dst, 1))
	if r.first == r.last {
		ex = append(ex, cmpEq(be16(r.first)))
	} else {
		ex = append(ex, &expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: be16(r.first)},
			&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: be16(r.last)})
	}
	return term{fmt.Sprintf("%s %s %s", proto, portWord(dst), r), ex}
}

// portIn matches ports in a set.
func portIn(proto string, dst bool, s *set) term {
	ex := append(l4dep(proto), portPayload(dst, 1), lookup(s))
	return term{fmt.Sprintf("%s %s @%s", proto, portWord(dst), s.name), ex}
}

// endpointIn matches the destination address and TCP port against a
// concatenated set. The port is loaded into the 32-bit register right after
// the address (nft's register layout for concatenations).
func endpointIn(f fam, s *set) term {
	portReg := uint32(9) // NFT_REG32_01, after a 4-byte address in NFT_REG_1
	if f.v6 {
		portReg = 2 // NFT_REG_2, after a 16-byte address in NFT_REG_1
	}
	ex := append(nfprotoDep(f), l4dep("tcp")...)
	ex = append(ex, addrPayload(f, false), portPayload(true, portReg), lookup(s))
	return term{fmt.Sprintf("%s daddr . tcp dport @%s", f.keyword(), s.name), ex}
}

// skid matches the sending socket's UID or GID: one id in host byte order,
// a range after converting to network order as nft does.
func skid(gid bool, r idRange, neq bool) term {
	key, kw := expr.MetaKeySKUID, "meta skuid"
	if gid {
		key, kw = expr.MetaKeySKGID, "meta skgid"
	}
	if r.first == r.last {
		op, shown := expr.CmpOpEq, ""
		if neq {
			op, shown = expr.CmpOpNeq, "!= "
		}
		return term{fmt.Sprintf("%s %s%d", kw, shown, r.first), []expr.Any{metaLoad(key), &expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(r.first)}}}
	}
	return term{fmt.Sprintf("%s %d-%d", kw, r.first, r.last), []expr.Any{
		metaLoad(key),
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binary.BigEndian.AppendUint32(nil, r.first)},
		&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binary.BigEndian.AppendUint32(nil, r.last)},
	}}
}

func mark(m uint32, neq bool) term {
	op, shown := expr.CmpOpEq, ""
	if neq {
		op, shown = expr.CmpOpNeq, "!= "
	}
	return term{fmt.Sprintf("meta mark %s0x%08x", shown, m), []expr.Any{metaLoad(expr.MetaKeyMARK), &expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(m)}}}
}

func ctBits(key expr.CtKey, text string, bits uint32) term {
	return term{text, []expr.Any{
		&expr.Ct{Key: key, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}}
}

// ctDNAT matches connections whose destination was rewritten (redirected
// by capture): iptables' --ctstate DNAT.
func ctDNAT() term { return ctBits(expr.CtKeySTATUS, "ct status dnat", 0x20) } // IPS_DST_NAT

func ctNew() term { return ctBits(expr.CtKeySTATE, "ct state new", 0x8) } // NF_CT_STATE_BIT(IP_CT_NEW)

func ctEstablished() term {
	return ctBits(expr.CtKeySTATE, "ct state established,related", 0x2|0x4) // NF_CT_STATE_BIT(ESTABLISHED|RELATED)
}

// Statements.

func drop() term { return term{"drop", []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}} }

func ret() term { return term{"return", []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}} }

func jump(chain string) term {
	return term{"jump " + chain, []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}}
}

func redirectTo(p uint16) term {
	return term{fmt.Sprintf("redirect to :%d", p), []expr.Any{
		&expr.Immediate{Register: 1, Data: be16(p)},
		&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	}}
}

func ctZone(z uint16) term {
	return term{fmt.Sprintf("ct zone set %d", z), []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint16(z)},
		&expr.Ct{Key: expr.CtKeyZONE, Register: 1, SourceRegister: true},
	}}
}

func rejectTCPReset() term {
	return term{"reject with tcp reset", []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}}
}

// rejectUnreachable answers with ICMP(v6) port unreachable, as iptables'
// REJECT does by default.
func rejectUnreachable(f fam) term {
	if f.v6 {
		return term{"reject with icmpv6 port-unreachable", append(nfprotoDep(f), &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 4})}
	}
	return term{"reject with icmp port-unreachable", append(nfprotoDep(f), &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3})}
}

// icmpv6TypeHopLimit matches an ICMPv6 message type sent with the given hop
// limit: neighbour discovery (255, RFC 4861) and MLD (1, RFC 3810) are only
// valid with theirs, so nothing else passes as one.
func icmpv6TypeHopLimit(name string, typ, hl byte) term {
	t := icmpv6Type(name, typ)
	t.text += fmt.Sprintf(" ip6 hoplimit %d", hl)
	t.exprs = append(t.exprs,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1}, cmpEq([]byte{hl}))
	return t
}

// icmpv6Type matches an ICMPv6 message type.
func icmpv6Type(name string, typ byte) term {
	ex := append(nfprotoDep(v6), metaLoad(expr.MetaKeyL4PROTO), cmpEq([]byte{unix.IPPROTO_ICMPV6}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1}, cmpEq([]byte{typ}))
	return term{"icmpv6 type " + name, ex}
}

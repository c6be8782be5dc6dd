package dnsproxy

import (
	"encoding/binary"

	"github.com/miekg/dns"
)

// query is what the fast path reads from a request without unpacking it.
type query struct {
	qname   []byte // lower-cased copy, wire format
	qend    int    // end of the question section in the request
	qtype   uint16
	edns    bool
	do      bool
	udpSize uint16
}

// parseQuery reads a plain query (one question, class IN, at most an OPT
// record) into q, lower-casing the name into buf. Anything else returns
// false and takes the slow path, which unpacks the message properly.
func parseQuery(req []byte, buf *[256]byte, q *query) bool {
	if len(req) < 12+5 {
		return false
	}
	// QR=0, opcode QUERY, one question, no answers or authority.
	if req[2]&0xf8 != 0 || binary.BigEndian.Uint16(req[4:]) != 1 ||
		req[6]|req[7]|req[8]|req[9] != 0 || req[10] != 0 || req[11] > 1 {
		return false
	}
	off := 12
	n := 0
	for {
		if off >= len(req) {
			return false
		}
		l := int(req[off])
		if l&0xc0 != 0 { // no compression in a question
			return false
		}
		if n+l+1 > 255 || off+l+1 > len(req) {
			return false
		}
		buf[n] = byte(l)
		n++
		off++
		if l == 0 {
			break
		}
		for i := 0; i < l; i++ {
			c := req[off+i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			buf[n+i] = c
		}
		n += l
		off += l
	}
	if off+4 > len(req) || binary.BigEndian.Uint16(req[off+2:]) != dns.ClassINET {
		return false
	}
	q.qname = buf[:n]
	q.qtype = binary.BigEndian.Uint16(req[off:])
	off += 4
	q.qend = off
	q.edns, q.do, q.udpSize = false, false, 0
	if req[11] == 1 {
		// OPT: root owner, type 41, class = UDP size, TTL = ext-rcode,
		// version, flags; options are ignored by table answers.
		if off+11 > len(req) || req[off] != 0 || binary.BigEndian.Uint16(req[off+1:]) != dns.TypeOPT {
			return false
		}
		if req[off+6] != 0 { // EDNS version: BADVERS is the slow path's job
			return false
		}
		q.edns = true
		q.udpSize = binary.BigEndian.Uint16(req[off+3:])
		q.do = req[off+7]&0x80 != 0
		end := off + 11 + int(binary.BigEndian.Uint16(req[off+9:]))
		if end != len(req) || !plainOptions(req[off+11:end]) {
			return false
		}
		off = end
	}
	return off == len(req)
}

// plainOptions reports whether EDNS0 options are well formed and of kinds
// whose content cannot make unpacking fail (NSID, cookie, padding): with
// anything else the slow path decides, so that both paths answer alike.
func plainOptions(b []byte) bool {
	for len(b) > 0 {
		if len(b) < 4 {
			return false
		}
		code, n := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if 4+n > len(b) {
			return false
		}
		switch code {
		case dns.EDNS0NSID, dns.EDNS0COOKIE, dns.EDNS0PADDING:
		default:
			return false
		}
		b = b[4+n:]
	}
	return true
}

// ednsBufSize is the UDP payload size shunt advertises; 1232 avoids IP
// fragmentation on any path (DNS flag day 2020).
const ednsBufSize = 1232

// appendTableAnswer appends to out the complete response to the query in req
// for entry e: header, the question exactly as asked (keeping the client's
// letter case, which 0x20-randomising resolvers check), the prebuilt
// answers, and an OPT record when the client sent one.
func appendTableAnswer(out, req []byte, q *query, e *entry) ([]byte, int) {
	var answers []byte
	var count int
	switch q.qtype {
	case dns.TypeA:
		answers, count = e.packedA, len(e.v4)
	case dns.TypeAAAA:
		answers, count = e.packedAAAA, len(e.v6)
	}
	out = append(out, req[0], req[1],
		0x84|req[2]&0x01, // QR, AA, RD as asked
		0x80|req[3]&0x10, // RA, CD as asked, NOERROR
		0, 1, byte(count>>8), byte(count), 0, 0, 0, 0)
	out = append(out, req[12:q.qend]...)
	out = append(out, answers...)
	if q.edns {
		out[11] = 1
		var flags byte
		if q.do {
			flags = 0x80
		}
		out = append(out, 0, 0, 41, ednsBufSize>>8, ednsBufSize&0xff, 0, 0, flags, 0, 0, 0)
	}
	return out, count
}

// TableAnswer is the answer the fast path sends to the UDP query req from
// t, and whether it answers req from t at all: the reference the kernel
// answerer (dnsproxy/kernelanswers) is tested against.
func TableAnswer(t *Table, req []byte) ([]byte, bool) {
	var nb [256]byte
	var q query
	if !parseQuery(req, &nb, &q) {
		return nil, false
	}
	e := t.lookupWire(q.qname)
	if e == nil || q.qtype != dns.TypeA && q.qtype != dns.TypeAAAA {
		return nil, false
	}
	out, _ := appendTableAnswer(nil, req, &q, e)
	if len(out) > clientLimit(q.edns, q.udpSize) {
		return nil, false
	}
	return out, true
}

// clientLimit is the largest UDP response the client accepts.
func clientLimit(edns bool, size uint16) int {
	if !edns || size < dns.MinMsgSize {
		return dns.MinMsgSize
	}
	return int(size)
}

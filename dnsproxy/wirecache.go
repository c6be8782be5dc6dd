package dnsproxy

import (
	"bytes"
	"encoding/binary"
	"time"

	"github.com/miekg/dns"
)

// wireAnswers are a cached answer packed exactly as the slow path packs it
// for a client without EDNS0 (plain) and with it (edns). Either may be nil:
// then that client takes the slow path.
type wireAnswers struct {
	plain, edns *wireAnswer
}

// wireAnswer is one packed answer, built once when the upstream's answer is
// stored, so that a cache hit costs a copy and a few patched bytes instead
// of copy → unpack-free rebuild → pack. Packing compresses owner names
// against the question as spelled, so a template only fits queries that
// spell the name the same way (byte for byte); others take the slow path.
type wireAnswer struct {
	b     []byte   // ID 0, RD clear, TTLs as the upstream gave them
	qname []byte   // the question name as spelled, b[12:12+len(qname)]
	ttls  []uint16 // offsets of the TTL fields of every record but OPT
	orig  []uint32 // their values
	// packLen is the size miekg/dns computed before packing; the slow path
	// truncates when that exceeds the client's limit, so both are checked.
	packLen int
}

// buildWire packs up as the answer to m for both kinds of client. It
// returns no templates when the question is not one the wire path parses.
func buildWire(m, up *dns.Msg) wireAnswers {
	var w wireAnswers
	if len(m.Question) != 1 || m.Question[0].Qclass != dns.ClassINET {
		return w
	}
	opt := m.IsEdns0()
	do := opt != nil && opt.Do()
	if !do {
		w.plain = packTemplate(m.Question[0], up, nil)
	}
	c := new(dns.Msg)
	c.SetEdns0(ednsBufSize, do)
	w.edns = packTemplate(m.Question[0], up, c.IsEdns0())
	return w
}

func packTemplate(q dns.Question, up *dns.Msg, clientOpt *dns.OPT) *wireAnswer {
	c := &dns.Msg{Question: []dns.Question{q}}
	r := fromUpstream(c, up.Copy())
	finishEDNS(r, clientOpt)
	r.Compress = true
	n := r.Len()
	b, err := r.Pack()
	if err != nil {
		return nil
	}
	w := &wireAnswer{b: b, packLen: n}
	if !w.index() {
		return nil
	}
	return w
}

// index finds the question name and the TTL fields in w.b.
func (w *wireAnswer) index() bool {
	b := w.b
	if len(b) < 12 || binary.BigEndian.Uint16(b[4:]) != 1 {
		return false
	}
	off, ok := skipName(b, 12)
	if !ok {
		return false
	}
	w.qname = b[12:off]
	off += 4
	rrs := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:])) + int(binary.BigEndian.Uint16(b[10:]))
	for range rrs {
		if off, ok = skipName(b, off); !ok || off+10 > len(b) {
			return false
		}
		if binary.BigEndian.Uint16(b[off:]) != dns.TypeOPT {
			w.ttls = append(w.ttls, uint16(off+4))
			w.orig = append(w.orig, binary.BigEndian.Uint32(b[off+4:]))
		}
		off += 10 + int(binary.BigEndian.Uint16(b[off+8:]))
	}
	return off == len(b) && off <= 0xffff
}

// skipName returns the offset just past the (possibly compressed) name at off.
func skipName(b []byte, off int) (int, bool) {
	for off < len(b) {
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xc0 == 0xc0:
			return off + 2, off+2 <= len(b)
		case l&0xc0 != 0:
			return 0, false
		}
		off += l + 1
	}
	return 0, false
}

// appendCached appends the answer to req from w: the client's ID and RD
// bit, TTLs aged since stored. It reports false when the query spells the
// name differently from the template or the answer would not fit the
// client's UDP limit (limit 0: TCP, no limit).
func appendCached(out, req []byte, q *query, w *wireAnswer, stored, now time.Time, limit int) ([]byte, bool) {
	if len(req) < 12+len(w.qname) || !bytes.Equal(req[12:12+len(w.qname)], w.qname) {
		return nil, false
	}
	if limit > 0 && (len(w.b) > limit || w.packLen > limit) {
		return nil, false
	}
	start := len(out)
	out = append(out, w.b...)
	r := out[start:]
	r[0], r[1] = req[0], req[1]
	r[2] = r[2]&^0x01 | req[2]&0x01
	age := uint32(now.Sub(stored) / time.Second)
	for i, off := range w.ttls {
		t := w.orig[i]
		if t > age {
			t -= age
		} else {
			t = 0
		}
		binary.BigEndian.PutUint32(r[off:], t)
	}
	return out, true
}

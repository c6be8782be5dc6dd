package dnsproxy

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// handle answers one query that the fast path did not: it unpacks the
// message, decides, and packs the response. It returns nil when the query
// must be dropped. A panic is contained to the query that caused it.
func (s *Server) handle(ctx context.Context, req []byte, tcp bool) (resp []byte) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.panics.Add(1)
			s.log.Error("panic answering a DNS query", "panic", r)
			resp = errorHeader(req, dns.RcodeServerFailure)
		}
	}()
	m := new(dns.Msg)
	if err := m.Unpack(req); err != nil {
		s.metrics.query(0, OutcomeFormErr)
		return errorHeader(req, dns.RcodeFormatError)
	}
	if m.Response {
		// Answering responses could make two servers bounce packets forever.
		s.metrics.query(0, OutcomeDropped)
		return nil
	}
	var qtype uint16
	if len(m.Question) > 0 {
		qtype = m.Question[0].Qtype
	}
	opt := m.IsEdns0()
	var r *dns.Msg
	var outcome Outcome
	switch {
	case m.Opcode != dns.OpcodeQuery:
		r, outcome = reply(m, dns.RcodeNotImplemented), OutcomeFormErr
	case len(m.Question) != 1, !oneOPT(m):
		r, outcome = reply(m, dns.RcodeFormatError), OutcomeFormErr
		opt = nil // which of the OPT records would be the client's is not known
	case opt != nil && opt.Version() != 0:
		r, outcome = reply(m, dns.RcodeBadVers), OutcomeFormErr
	default:
		r, outcome = s.answer(ctx, m, tcp)
	}
	s.metrics.query(qtype, outcome)
	finishEDNS(r, opt)
	if !tcp {
		if truncate(r, clientLimit(opt != nil, udpSize(opt))) {
			s.metrics.truncated.Add(1)
		}
	} else {
		r.Compress = true
	}
	b, err := r.Pack()
	if err != nil {
		s.log.Debug("pack DNS response", "name", m.Question, "err", err)
		return errorHeader(req, dns.RcodeServerFailure)
	}
	return b
}

// oneOPT reports whether m has at most one OPT record, and that one in the
// additional section: RFC 6891 section 6.1.1 makes anything else FORMERR.
func oneOPT(m *dns.Msg) bool {
	n := 0
	for _, sec := range [][]dns.RR{m.Answer, m.Ns} {
		for _, rr := range sec {
			if rr.Header().Rrtype == dns.TypeOPT {
				return false
			}
		}
	}
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			n++
		}
	}
	return n <= 1
}

func udpSize(opt *dns.OPT) uint16 {
	if opt == nil {
		return 0
	}
	return opt.UDPSize()
}

// errorHeader is a bare response carrying only the query's ID and rcode, for
// queries too broken to echo; nil when even the header is missing.
func errorHeader(req []byte, rcode int) []byte {
	if len(req) < 12 || req[2]&0x80 != 0 {
		return nil
	}
	b := make([]byte, 12)
	copy(b, req[:2])
	b[2] = 0x80 | req[2]&0x79 // QR, opcode and RD as asked
	b[3] = byte(rcode & 0xf)
	return b
}

func reply(m *dns.Msg, rcode int) *dns.Msg {
	r := new(dns.Msg)
	r.SetRcode(m, rcode)
	r.RecursionAvailable = true
	return r
}

// answer decides: the table, the search-domain shortcut, local zones, the
// unknown-names policy, and finally the cache and the upstreams.
func (s *Server) answer(ctx context.Context, m *dns.Msg, tcp bool) (*dns.Msg, Outcome) {
	q := m.Question[0]
	name := strings.ToLower(q.Name)
	t := s.table.Load()
	if q.Qclass == dns.ClassINET {
		if e := lookupName(t, name); e != nil {
			if q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA {
				r := authoritative(m)
				r.Answer = e.rrs(q.Name, q.Qtype, t.ttl)
				return r, OutcomeTable
			}
			if s.inLocalZone(name) {
				return authoritative(m), OutcomeTable // NODATA: the name exists
			}
			// A real external name: its other records live upstream.
			return s.forward(ctx, m, tcp)
		}
		if r := s.searchShortcut(m, t, name); r != nil {
			return r, OutcomeSearch
		}
		if s.inLocalZone(name) {
			r := authoritative(m)
			r.Rcode = dns.RcodeNameError
			return r, OutcomeNXDomain
		}
	}
	switch s.cfg.UnknownNames {
	case UnknownNXDomain:
		return reply(m, dns.RcodeNameError), OutcomeNXDomain
	case UnknownRefused:
		return reply(m, dns.RcodeRefused), OutcomeRefused
	}
	return s.forward(ctx, m, tcp)
}

func authoritative(m *dns.Msg) *dns.Msg {
	r := new(dns.Msg)
	r.SetReply(m)
	r.Authoritative = true
	r.RecursionAvailable = true
	return r
}

func lookupName(t *Table, name string) *entry {
	var buf [256]byte
	n, err := dns.PackDomainName(name, buf[:], 0, nil, false)
	if err != nil {
		return nil
	}
	return t.lookupWire(buf[:n])
}

func (s *Server) inLocalZone(name string) bool {
	for _, z := range s.zones {
		if dns.IsSubDomain(z, name) {
			return true
		}
	}
	return false
}

// searchShortcut answers name.<search domain> for a known name with a
// CNAME to the known name and its addresses: a pod with ndots:5 asks the
// search-domain forms first, and this saves it a round of NXDOMAINs.
func (s *Server) searchShortcut(m *dns.Msg, t *Table, name string) *dns.Msg {
	for _, sd := range s.search {
		base, ok := strings.CutSuffix(name, "."+sd)
		if !ok || base == "" {
			continue
		}
		base += "."
		e := lookupName(t, base)
		if e == nil {
			continue
		}
		q := m.Question[0]
		r := authoritative(m)
		r.Answer = append(r.Answer, &dns.CNAME{
			Hdr:    dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: t.ttl},
			Target: base,
		})
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA {
			r.Answer = append(r.Answer, e.rrs(base, q.Qtype, t.ttl)...)
		}
		return r
	}
	return nil
}

// forward answers from the cache or the upstreams, falling back to a stale
// answer (when enabled) or SERVFAIL when every upstream failed.
func (s *Server) forward(ctx context.Context, m *dns.Msg, tcp bool) (*dns.Msg, Outcome) {
	q := m.Question[0]
	opt := m.IsEdns0()
	key, cacheable := keyFor(q.Name, q.Qtype, q.Qclass, opt != nil && opt.Do(), m.CheckingDisabled)
	if !cacheable {
		key = ""
	}
	now := time.Now()
	c, stale := s.cache.get(key, now, true)
	if c != nil && !stale {
		s.metrics.cacheHits.Add(1)
		return fromUpstream(m, c), OutcomeCache
	}
	s.metrics.cacheMiss.Add(1)
	if c != nil {
		return s.forwardStale(ctx, m, tcp, key, c)
	}
	up, err := s.fwd.exchange(ctx, m, tcp)
	if err != nil {
		if c, stale := s.cache.get(key, time.Now(), true); c != nil && stale {
			return fromUpstream(m, c), OutcomeStale
		}
		if !errors.Is(ctx.Err(), context.Canceled) {
			s.log.Debug("forward DNS query", "name", q.Name, "type", dns.TypeToString[q.Qtype], "err", err)
		}
		return reply(m, dns.RcodeServerFailure), OutcomeServFail
	}
	if cacheable && s.cache != nil {
		s.cache.put(key, up, buildWire(m, up), now)
	}
	return fromUpstream(m, up.Copy()), OutcomeForwarded
}

// forwardStale answers a query whose cached answer has expired (serve-stale
// is on): the upstreams are asked in the background, and the client gets
// their answer if it comes within the stale-answer timer, the stale answer
// otherwise (RFC 8767 section 5). While every upstream is known to be
// failing nobody waits for them: the stale answer goes out at once and the
// refresh finds out when they are back.
func (s *Server) forwardStale(ctx context.Context, m *dns.Msg, tcp bool, key cacheKey, stale *dns.Msg) (*dns.Msg, Outcome) {
	if !s.fwd.anyHealthy(time.Now()) {
		// One refresh at a time is enough to notice the upstreams are back
		// (its success marks them healthy); more would only wait on them.
		s.refresh(ctx, m, tcp, key, true)
		return fromUpstream(m, stale), OutcomeStale
	}
	ref := s.refresh(ctx, m, tcp, key, false)
	if ref == nil {
		return fromUpstream(m, stale), OutcomeStale
	}
	timer := time.NewTimer(s.cache.opts.StaleAnswerTimeout)
	defer timer.Stop()
	select {
	case <-ref.done:
		if ref.err == nil {
			return fromUpstream(m, ref.m.Copy()), OutcomeForwarded
		}
	case <-timer.C:
	case <-ctx.Done():
	}
	return fromUpstream(m, stale), OutcomeStale
}

// refreshing is one upstream query for an expired cache entry; clients
// that find the same entry expired wait for it rather than ask again.
type refreshing struct {
	done chan struct{}
	m    *dns.Msg // the upstream's answer, owned by the cache once done
	err  error
}

// refresh starts (or joins) the upstream query that refreshes key. It
// returns nil when as many refreshes as MaxInFlight are running already,
// or, with alone, when any other refresh is.
func (s *Server) refresh(ctx context.Context, m *dns.Msg, tcp bool, key cacheKey, alone bool) *refreshing {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	if r := s.refreshes[key]; r != nil {
		return r
	}
	if len(s.refreshes) >= s.cfg.MaxInFlight || (alone && len(s.refreshes) > 0) {
		return nil
	}
	r := &refreshing{done: make(chan struct{})}
	s.refreshes[key] = r
	m = m.Copy()
	s.background.Add(1)
	go func() {
		defer s.background.Done()
		now := time.Now()
		up, err := s.fwd.exchange(ctx, m, tcp)
		if err == nil {
			s.cache.put(key, up, buildWire(m, up), now)
		}
		r.m, r.err = up, err
		s.refreshMu.Lock()
		delete(s.refreshes, key)
		s.refreshMu.Unlock()
		close(r.done)
	}()
	return r
}

// fromUpstream turns an upstream's answer (owned by the caller) into the
// answer to the client's query: the client's ID and question spelling, its
// RD bit, and an OPT record only if the client sent one.
func fromUpstream(m, up *dns.Msg) *dns.Msg {
	up.Id = m.Id
	up.Question = m.Question
	up.RecursionDesired = m.RecursionDesired
	up.Compress = true
	return up
}

// finishEDNS gives r the OPT record the client should see: none if it sent
// none; otherwise shunt's buffer size, the client's DO bit, the extended
// rcode, and the upstream's options except its cookie, which belongs to the
// upstream–shunt exchange, not to the client.
func finishEDNS(r *dns.Msg, clientOpt *dns.OPT) {
	var upOpt *dns.OPT
	extra := r.Extra[:0]
	for _, rr := range r.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			upOpt = o
			continue
		}
		extra = append(extra, rr)
	}
	r.Extra = extra
	if clientOpt == nil {
		if r.Rcode > 0xf {
			r.Rcode = dns.RcodeServerFailure
		}
		return
	}
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	o.SetUDPSize(ednsBufSize)
	o.SetDo(clientOpt.Do())
	if upOpt != nil {
		for _, opt := range upOpt.Option {
			if opt.Option() != dns.EDNS0COOKIE {
				o.Option = append(o.Option, opt)
			}
		}
	}
	r.Extra = append(r.Extra, o)
}

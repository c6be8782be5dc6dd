package dnsproxy

import "github.com/miekg/dns"

// truncate makes r fit a client's UDP limit. Additional records go first,
// silently (RFC 2181 section 9: they are optional); if the answer still does
// not fit, records are dropped and TC is set so that the client asks again
// over TCP. It reports whether TC was set.
func truncate(r *dns.Msg, limit int) bool {
	r.Compress = true
	if r.Len() <= limit {
		return false
	}
	var opt dns.RR
	for _, rr := range r.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			opt = rr
		}
	}
	r.Extra = r.Extra[:0]
	if opt != nil {
		r.Extra = append(r.Extra, opt)
	}
	if r.Len() <= limit {
		return false
	}
	r.Truncate(limit)
	r.Truncated = true
	return true
}

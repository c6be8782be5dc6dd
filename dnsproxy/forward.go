package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// ErrAllUpstreamsFailed is returned when no upstream gave a usable answer.
var ErrAllUpstreamsFailed = errors.New("every upstream failed")

// upstream is one resolver and what shunt has learnt about its health.
type upstream struct {
	addr      netip.AddrPort
	dial      string // addr as the dialer takes it, formatted once
	pool      *udpPool
	m         *upstreamMetrics
	fails     atomic.Int32 // consecutive failures
	downUntil atomic.Int64 // unix nanos; skipped to the back of the order until then
}

const (
	downAfter   = 3               // consecutive failures before an upstream is put last
	downBackoff = 5 * time.Second // how long it stays last before it is tried first again
)

func (u *upstream) healthy(now time.Time) bool {
	return u.downUntil.Load() <= now.UnixNano()
}

func (u *upstream) record(d time.Duration, err error, now time.Time) {
	u.m.observe(d, err != nil)
	if err == nil {
		u.fails.Store(0)
		u.downUntil.Store(0)
		return
	}
	if u.fails.Add(1) >= downAfter {
		u.downUntil.Store(now.Add(downBackoff).UnixNano())
	}
}

// forwarder sends queries to upstreams: healthy ones first in the order
// given, the next one also asked when the current one is silent for the
// hedge delay, each attempt with a fresh random ID, over UDP on one of the
// upstream's pooled sockets (upstreampool.go), over TCP on a fresh
// connection.
type forwarder struct {
	ups     atomic.Pointer[[]*upstream]
	dialer  net.Dialer
	hedge   time.Duration
	timeout time.Duration
	bufSize uint16
}

func (f *forwarder) order(now time.Time) []*upstream {
	ups := *f.ups.Load()
	out := make([]*upstream, 0, len(ups))
	for _, u := range ups {
		if u.healthy(now) {
			out = append(out, u)
		}
	}
	for _, u := range ups {
		if !u.healthy(now) {
			out = append(out, u)
		}
	}
	return out
}

// anyHealthy reports whether some upstream is not known to be failing.
func (f *forwarder) anyHealthy(now time.Time) bool {
	for _, u := range *f.ups.Load() {
		if u.healthy(now) {
			return true
		}
	}
	return false
}

type attemptResult struct {
	m   *dns.Msg
	err error
}

// exchange resolves req (a client's query, not modified) and returns the
// first usable answer: NOERROR or NXDOMAIN. When every upstream failed it
// returns ErrAllUpstreamsFailed.
func (f *forwarder) exchange(ctx context.Context, req *dns.Msg, tcp bool) (*dns.Msg, error) {
	ups := f.order(time.Now())
	if len(ups) == 0 {
		return nil, fmt.Errorf("%w: no upstreams configured", ErrAllUpstreamsFailed)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel() // also stops the attempts still running
	if len(ups) == 1 {
		// Nothing to hedge with: ask in this goroutine, which saves a
		// goroutine, a channel and a timer per query (and their memory
		// while the queue is full).
		m, err := f.attempt(ctx, ups[0], req, tcp)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrAllUpstreamsFailed, err)
		}
		return m, nil
	}
	ch := make(chan attemptResult, len(ups))
	next := 0
	launch := func() {
		u := ups[next]
		next++
		go func() {
			m, err := f.attempt(ctx, u, req, tcp)
			ch <- attemptResult{m, err}
		}()
	}
	launch()
	pending := 1
	hedge := time.NewTimer(f.hedge)
	defer hedge.Stop()
	var errs []error
	for {
		select {
		case r := <-ch:
			pending--
			if r.err == nil {
				return r.m, nil
			}
			errs = append(errs, r.err)
			if next < len(ups) {
				launch()
				pending++
				hedge.Reset(f.hedge)
			} else if pending == 0 {
				return nil, fmt.Errorf("%w: %w", ErrAllUpstreamsFailed, errors.Join(errs...))
			}
		case <-hedge.C:
			if next < len(ups) {
				launch()
				pending++
				hedge.Reset(f.hedge)
			}
		case <-ctx.Done():
			errs = append(errs, ctx.Err())
			return nil, fmt.Errorf("%w: %w", ErrAllUpstreamsFailed, errors.Join(errs...))
		}
	}
}

// attempt asks one upstream. The query gets a fresh random ID on a socket
// with a random source port that lives at most a second; a reply counts
// only if it comes from the upstream and its ID and question match, which
// is what makes spoofing a reply hard.
func (f *forwarder) attempt(ctx context.Context, u *upstream, req *dns.Msg, tcp bool) (*dns.Msg, error) {
	start := time.Now()
	m, err := f.ask(ctx, u, req, tcp)
	if err == nil && m.Truncated && !tcp {
		// The upstream could not fit the answer in UDP: ask again over TCP.
		m, err = f.ask(ctx, u, req, true)
	}
	if err == nil && m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		err = fmt.Errorf("upstream %s answered %s", u.addr, dns.RcodeToString[m.Rcode])
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		// Another upstream answered first; this one is neither better nor worse.
		return nil, fmt.Errorf("upstream %s: %w", u.addr, context.Canceled)
	}
	u.record(time.Since(start), err, time.Now())
	return m, err
}

func (f *forwarder) ask(ctx context.Context, u *upstream, req *dns.Msg, tcp bool) (*dns.Msg, error) {
	q := req.Copy()
	if opt := q.IsEdns0(); opt != nil {
		// Ask for as much as shunt can take; the client's own limit is
		// applied when the answer is sent back to it.
		opt.SetUDPSize(f.bufSize)
	}
	if !tcp {
		return f.askUDP(ctx, u, q)
	}
	q.Id = dns.Id()
	conn, err := f.dialer.DialContext(ctx, "tcp", u.dial)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: dial tcp: %w", u.addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	return f.readTCP(ctx, u, conn, q)
}

// askUDP asks over one of the upstream's pooled sockets, under an ID that
// no other query waiting on that socket holds.
func (f *forwarder) askUDP(ctx context.Context, u *upstream, q *dns.Msg) (*dns.Msg, error) {
	q.Id = 0
	b, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("upstream %s: pack query: %w", u.addr, err)
	}
	qend := questionEnd(b)
	if qend < 0 {
		return nil, fmt.Errorf("upstream %s: pack query: no question", u.addr)
	}
	sock, id, w, err := u.pool.register(ctx, b[12:qend])
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.addr, err)
	}
	defer sock.done(id)
	binary.BigEndian.PutUint16(b, id)
	q.Id = id
	if _, err := sock.conn.Write(b); err != nil {
		return nil, fmt.Errorf("upstream %s: send over udp: %w", u.addr, err)
	}
	for {
		var a poolAnswer
		select {
		case a = <-w.answers:
		case <-ctx.Done():
			return nil, fmt.Errorf("upstream %s over udp: %w", u.addr, ctx.Err())
		}
		if a.err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.addr, a.err)
		}
		r := new(dns.Msg)
		if len(a.b) == poolReadBuf {
			// Too large for shunt's buffer: keep the header only and let
			// the TCP retry fetch it whole.
			r.Id, r.Response, r.Truncated = q.Id, true, true
			r.Question = q.Question
			return r, nil
		}
		if err := r.Unpack(a.b); err != nil {
			continue // garbage on UDP: keep waiting for the real reply
		}
		if r.Id != q.Id || !r.Response || !sameQuestion(r, q) {
			continue // not ours, or forged: ignore
		}
		return r, nil
	}
}

// questionEnd returns the offset just past the first question of the
// packed message b, or -1 if it has none (or it is cut short).
func questionEnd(b []byte) int {
	if len(b) < 12 || binary.BigEndian.Uint16(b[4:]) == 0 {
		return -1
	}
	off := 12
	for off < len(b) && b[off] != 0 {
		if b[off]&0xc0 != 0 {
			return -1 // a query shunt packed has no pointer in its question
		}
		off += int(b[off]) + 1
	}
	off += 1 + 4
	if off > len(b) {
		return -1
	}
	return off
}

func (f *forwarder) readTCP(ctx context.Context, u *upstream, conn net.Conn, q *dns.Msg) (*dns.Msg, error) {
	co := &dns.Conn{Conn: conn}
	if err := co.WriteMsg(q); err != nil {
		return nil, fmt.Errorf("upstream %s: send over tcp: %w", u.addr, err)
	}
	r, err := co.ReadMsg()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("upstream %s over tcp: %w", u.addr, ctx.Err())
		}
		return nil, fmt.Errorf("upstream %s: read over tcp: %w", u.addr, err)
	}
	if r.Id != q.Id || !r.Response || !sameQuestion(r, q) {
		return nil, fmt.Errorf("upstream %s: reply does not match the query", u.addr)
	}
	return r, nil
}

func sameQuestion(a, b *dns.Msg) bool {
	if len(a.Question) != len(b.Question) {
		return false
	}
	for i := range a.Question {
		qa, qb := a.Question[i], b.Question[i]
		if qa.Qtype != qb.Qtype || qa.Qclass != qb.Qclass || !strings.EqualFold(qa.Name, qb.Name) {
			return false
		}
	}
	return true
}

package dnsproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// batchSize is how many datagrams one recvmmsg/sendmmsg call moves: under
// load this divides the system calls per query by up to this much.
const batchSize = 32

// serveUDP reads queries from one socket, in batches. Table and cache
// answers are made and written by the reader without allocating;
// everything else is handed to a goroutine, bounded by MaxInFlight, so
// that a slow upstream never holds up table answers.
func (s *Server) serveUDP(stop, work context.Context, pc net.PacketConn, handlers *sync.WaitGroup) {
	r := s.newUDPReader(stop, work, pc, handlers)
	if r == nil {
		s.serveUDPSimple(stop, work, pc, handlers)
		return
	}
	s.readers.Store(r.id, r)
	defer s.readers.Delete(r.id)
	for {
		err := r.rc.Read(func(fd uintptr) bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.readBatch(fd)
		})
		if err != nil && (stop.Err() != nil || errors.Is(err, net.ErrClosed)) {
			return
		}
	}
}

// udpReader is the state of one UDP socket's reader: its batches and its
// admission window. Whoever holds mu reads the socket: the reader
// goroutine, or a slow-path goroutine lending a hand (helpRead).
type udpReader struct {
	s        *Server
	id       int
	stop     context.Context
	work     context.Context
	handlers *sync.WaitGroup
	uc       *net.UDPConn
	rc       syscall.RawConn
	write    func([]byte, netip.AddrPort)

	mu            sync.Mutex
	in, out       *mmsgBatch
	bufs, outBufs [][]byte
	nb            [256]byte
	q             query
	adm           admission
}

func (s *Server) newUDPReader(stop, work context.Context, pc net.PacketConn, handlers *sync.WaitGroup) *udpReader {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &udpReader{s: s, id: int(s.readerIDs.Add(1)), stop: stop, work: work, handlers: handlers, uc: uc, rc: rc,
		in: newMmsgBatch(batchSize), out: newMmsgBatch(batchSize),
		bufs: make([][]byte, batchSize), outBufs: make([][]byte, batchSize), adm: newAdmission()}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, s.cfg.MaxMessageSize+1)
		r.outBufs[i] = make([]byte, 0, 2048)
	}
	r.write = func(b []byte, to netip.AddrPort) { _, _ = uc.WriteToUDPAddrPort(b, to) }
	return r
}

// readBatch reads one batch from the socket fd without waiting, answers
// what it can and hands the rest to the slow path. It reports false when
// nothing was waiting. Called with r.mu held.
func (r *udpReader) readBatch(fd uintptr) bool {
	s := r.s
	n, errno := r.in.recv(fd, r.bufs)
	if errno == syscall.EAGAIN {
		return false
	}
	if errno != 0 {
		return true // the next read tries again
	}
	r.adm.batch(time.Now(), n == len(r.bufs))
	nout := 0
	for i := 0; i < n; i++ {
		size := r.in.received(i)
		if size > s.cfg.MaxMessageSize || size < 12 {
			s.metrics.query(0, OutcomeDropped)
			continue
		}
		req := r.bufs[i][:size]
		if resp, ok := s.fast(req, r.outBufs[i][:0], &r.nb, &r.q, true); ok {
			r.out.set(nout, resp)
			r.out.copyName(nout, r.in, i)
			nout++
			continue
		}
		from := r.in.addr(i)
		if !from.IsValid() {
			continue
		}
		if !r.adm.allow(s.clients.holds(from) == 0) {
			s.metrics.query(0, OutcomeDropped)
			continue
		}
		s.slowUDP(r.work, req, from, r.write, r.handlers)
	}
	if nout > 0 {
		_ = r.out.send(r.rc, nout) // a client whose answer is lost retries
	}
	return true
}

// helpRead has a slow-path goroutine read one batch from each UDP socket
// whose reader is not at work. The Go scheduler looks at the netpoller
// only when it has nothing else to run (or every 10 ms, from sysmon), so
// while slow-path goroutines keep the CPU busy a reader woken by a table
// query would wait behind all of them, up to 10 ms; slow-path work calls
// this before and after its share of CPU, so table and cache answers wait
// at most for one slow-path query. A read that finds nothing costs one
// non-blocking system call.
func (s *Server) helpRead() {
	s.readers.Range(func(_, v any) bool {
		r := v.(*udpReader)
		if r.stop.Err() != nil || !r.mu.TryLock() {
			return true
		}
		_ = r.rc.Control(func(fd uintptr) { r.readBatch(fd) })
		r.mu.Unlock()
		return true
	})
}

// batchConn is what ipv4.PacketConn and ipv6.PacketConn share.
type batchConn interface {
	ReadBatch([]ipv4.Message, int) (int, error)
	WriteBatch([]ipv4.Message, int) (int, error)
}

// slowUDP hands a query the fast path did not answer to its own goroutine.
// The reader never waits here: when the client already has its share of
// the forwarding slots in use, or every slot is taken, the query is
// dropped and the client retries (possibly elsewhere). The share is what
// keeps one flooding client from taking the slots of everyone else.
func (s *Server) slowUDP(work context.Context, req []byte, from netip.AddrPort, write func([]byte, netip.AddrPort), handlers *sync.WaitGroup) {
	if !s.clients.acquire(from) {
		s.metrics.query(0, OutcomeDropped)
		return
	}
	select {
	case s.inflight <- struct{}{}:
	default:
		s.clients.release(from)
		s.metrics.query(0, OutcomeDropped)
		return
	}
	cp := append([]byte(nil), req...)
	handlers.Add(1)
	go func() {
		defer handlers.Done()
		defer s.clients.release(from)
		defer func() { <-s.inflight }()
		s.helpRead()
		resp := s.handle(work, cp, false)
		s.helpRead()
		if resp != nil {
			write(resp, from)
		}
	}()
}

// clientShares counts the forwarding slots each client (source address and
// port: the finest identity a UDP datagram carries) holds, so that none
// takes more than its share of MaxInFlight.
type clientShares struct {
	max    int
	shards [16]struct {
		mu sync.Mutex
		n  map[netip.AddrPort]int
	}
}

func newClientShares(max int) *clientShares {
	c := &clientShares{max: max}
	for i := range c.shards {
		c.shards[i].n = map[netip.AddrPort]int{}
	}
	return c
}

func (c *clientShares) shard(a netip.AddrPort) int {
	b := a.Addr().As16()
	return int(b[15]^b[14]^byte(a.Port())^byte(a.Port()>>8)) % len(c.shards)
}

func (c *clientShares) acquire(a netip.AddrPort) bool {
	sh := &c.shards[c.shard(a)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.n[a] >= c.max {
		return false
	}
	sh.n[a]++
	return true
}

// holds returns how many slots a holds.
func (c *clientShares) holds(a netip.AddrPort) int {
	sh := &c.shards[c.shard(a)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.n[a]
}

func (c *clientShares) release(a netip.AddrPort) {
	sh := &c.shards[c.shard(a)]
	sh.mu.Lock()
	if sh.n[a]--; sh.n[a] <= 0 {
		delete(sh.n, a)
	}
	sh.mu.Unlock()
}

// serveUDPSimple serves a PacketConn that is not a *net.UDPConn, one
// datagram at a time.
func (s *Server) serveUDPSimple(stop, work context.Context, pc net.PacketConn, handlers *sync.WaitGroup) {
	buf := make([]byte, s.cfg.MaxMessageSize+1)
	out := make([]byte, 0, 2048)
	var nb [256]byte
	var q query
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if stop.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if n > s.cfg.MaxMessageSize || n < 12 {
			s.metrics.query(0, OutcomeDropped)
			continue
		}
		req := buf[:n]
		if resp, ok := s.fast(req, out[:0], &nb, &q, true); ok {
			_, _ = pc.WriteTo(resp, addr)
			continue
		}
		s.slowUDP(work, req, netip.AddrPort{}, func(b []byte, _ netip.AddrPort) { _, _ = pc.WriteTo(b, addr) }, handlers)
	}
}

// fast answers from the wire, without unpacking: A and AAAA queries for
// table names, and fresh cache hits for forwarded names. Everything else,
// and anything it is unsure of, returns false for the slow path.
func (s *Server) fast(req, out []byte, nb *[256]byte, q *query, udp bool) (resp []byte, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.panics.Add(1)
			s.log.Error("panic answering from the wire", "panic", r)
			resp, ok = nil, false
		}
	}()
	if !parseQuery(req, nb, q) {
		return nil, false
	}
	t := s.table.Load()
	e := t.lookupWire(q.qname)
	if e == nil {
		return s.fastCached(req, out, q, t, udp)
	}
	if q.qtype != dns.TypeA && q.qtype != dns.TypeAAAA {
		return nil, false
	}
	out, _ = appendTableAnswer(out, req, q, e)
	if udp && len(out) > clientLimit(q.edns, q.udpSize) {
		return nil, false // the slow path truncates properly
	}
	s.metrics.query(q.qtype, OutcomeTable)
	return out, true
}

// fastCached answers a name that is not in the table from the cache, when
// the slow path would have reached the cache too: forwarding is the policy
// and no search-domain shortcut applies. (Local-zone names are never
// cached: they are answered before the cache.)
func (s *Server) fastCached(req, out []byte, q *query, t *Table, udp bool) ([]byte, bool) {
	if s.cache == nil || s.cfg.UnknownNames != UnknownForward || s.shortcutMayApply(q.qname, t) {
		return nil, false
	}
	var kb [256 + 5]byte
	key := appendCacheKey(kb[:0], q.qname, q.qtype, dns.ClassINET, q.do, req[3]&0x10 != 0)
	now := time.Now()
	w, stored := s.cache.getWire(key, now, q.edns)
	if w == nil {
		return nil, false
	}
	limit := 0
	if udp {
		limit = clientLimit(q.edns, q.udpSize)
	}
	out, ok := appendCached(out, req, q, w, stored, now, limit)
	if !ok {
		return nil, false
	}
	s.metrics.cacheHits.Add(1)
	s.metrics.query(q.qtype, OutcomeCache)
	return out, true
}

// shortcutMayApply reports whether the search-domain shortcut could answer
// name (lower-case wire form) with table t. A label holding a dot or a
// backslash matches search domains differently in presentation form, where
// the slow path compares them, so it is left to the slow path.
func (s *Server) shortcutMayApply(name []byte, t *Table) bool {
	if len(s.searchWire) == 0 {
		return false
	}
	for off := 0; off < len(name) && name[off] != 0; off += int(name[off]) + 1 {
		if bytes.ContainsAny(name[off+1:off+1+int(name[off])], `.\`) {
			return true
		}
	}
	var base [256]byte
	for _, sd := range s.searchWire {
		if len(name) <= len(sd) || !bytes.HasSuffix(name, sd) {
			continue
		}
		// The suffix must start on a label boundary.
		off := 0
		for off < len(name)-len(sd) {
			off += int(name[off]) + 1
		}
		if off != len(name)-len(sd) {
			continue
		}
		n := copy(base[:], name[:off])
		base[n] = 0
		if t.lookupWire(base[:n+1]) != nil {
			return true
		}
	}
	return false
}

// connSet tracks TCP connections: it bounds them in total and per peer, and
// when a new connection would go over a bound it closes the connection that
// has waited longest with nothing in flight (RFC 7766 section 6.2.3), so
// that a process holding every slot with idle or half-sent connections
// cannot keep other clients out. Connections with a query being answered
// are never closed for room; then the new connection is refused. Shutdown
// closes the idle ones at once and the busy ones when they finish.
type connSet struct {
	mu      sync.Mutex
	conns   map[net.Conn]*tcpConn
	perPeer map[netip.Addr]int
	max     int
	peerMax int
	closing bool
}

type tcpConn struct {
	c    net.Conn
	peer netip.Addr
	// reading: waiting for (the rest of) a query; pending: queries read
	// and not yet answered. Only reading with nothing pending may be
	// closed for room or at shutdown.
	reading    bool
	pending    int
	lastActive time.Time
	evicted    bool
}

func newConnSet(max, peerMax int) *connSet {
	return &connSet{conns: map[net.Conn]*tcpConn{}, perPeer: map[netip.Addr]int{}, max: max, peerMax: peerMax}
}

// peerOf is the identity connections are counted by: the client's address.
func peerOf(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// add admits c, closing an idle connection to make room when needed; it
// reports false when c must be refused.
func (cs *connSet) add(c net.Conn, now time.Time) bool {
	peer := peerOf(c)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closing {
		return false
	}
	if cs.perPeer[peer] >= cs.peerMax {
		if !cs.evictLocked(now, func(tc *tcpConn) bool { return tc.peer == peer }) {
			return false
		}
	}
	if len(cs.conns) >= cs.max {
		// Room is taken from the peer holding the most connections.
		busiest, most := netip.Addr{}, 0
		for p, n := range cs.perPeer {
			if n > most {
				busiest, most = p, n
			}
		}
		if !cs.evictLocked(now, func(tc *tcpConn) bool { return tc.peer == busiest }) &&
			!cs.evictLocked(now, func(*tcpConn) bool { return true }) {
			return false
		}
	}
	cs.conns[c] = &tcpConn{c: c, peer: peer, reading: true, lastActive: now}
	cs.perPeer[peer]++
	return true
}

// evictGrace is how long a connection is safe from being closed for room
// after it was accepted or last active: its client's query may be on its
// way or not yet read.
const evictGrace = 500 * time.Millisecond

// evictLocked closes the longest-idle connection that match accepts.
func (cs *connSet) evictLocked(now time.Time, match func(*tcpConn) bool) bool {
	var victim *tcpConn
	for _, tc := range cs.conns {
		if tc.reading && tc.pending == 0 && now.Sub(tc.lastActive) >= evictGrace && match(tc) &&
			(victim == nil || tc.lastActive.Before(victim.lastActive)) {
			victim = tc
		}
	}
	if victim == nil {
		return false
	}
	victim.evicted = true
	cs.dropLocked(victim)
	victim.c.Close()
	return true
}

func (cs *connSet) dropLocked(tc *tcpConn) {
	delete(cs.conns, tc.c)
	if cs.perPeer[tc.peer]--; cs.perPeer[tc.peer] <= 0 {
		delete(cs.perPeer, tc.peer)
	}
}

func (cs *connSet) remove(c net.Conn) {
	cs.mu.Lock()
	if tc := cs.conns[c]; tc != nil {
		cs.dropLocked(tc)
	}
	cs.mu.Unlock()
}

// setReading marks c waiting for a query (or not); it reports false when c
// should close.
func (cs *connSet) setReading(c net.Conn, reading bool) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	tc := cs.conns[c]
	if tc == nil {
		return false // closed for room
	}
	if cs.closing && reading && tc.pending == 0 {
		return false
	}
	tc.reading = reading
	tc.lastActive = time.Now()
	return true
}

// begin and end count a query of c being answered.
func (cs *connSet) begin(c net.Conn) {
	cs.mu.Lock()
	if tc := cs.conns[c]; tc != nil {
		tc.pending++
	}
	cs.mu.Unlock()
}

func (cs *connSet) end(c net.Conn) {
	cs.mu.Lock()
	if tc := cs.conns[c]; tc != nil {
		tc.pending--
		tc.lastActive = time.Now()
		if cs.closing && tc.reading && tc.pending == 0 {
			c.Close()
		}
	}
	cs.mu.Unlock()
}

func (cs *connSet) closeIdle() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closing = true
	for c, tc := range cs.conns {
		if tc.reading && tc.pending == 0 {
			c.Close()
		}
	}
}

func (cs *connSet) closeAll() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closing = true
	for c := range cs.conns {
		c.Close()
	}
}

func (s *Server) serveTCP(stop, work context.Context, ln net.Listener, conns *connSet, handlers *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if stop.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !conns.add(c, time.Now()) {
			s.log.Debug("too many busy TCP connections, closing a new one", "limit", s.cfg.MaxTCPConns, "remote", c.RemoteAddr())
			c.Close()
			continue
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			defer conns.remove(c)
			defer c.Close()
			s.serveConn(stop, work, c, conns)
		}()
	}
}

// serveConn answers the queries of one TCP connection; several may be in
// flight at once (RFC 7766 pipelining) and answers go out as they are ready.
func (s *Server) serveConn(stop, work context.Context, c net.Conn, conns *connSet) {
	s.metrics.tcpConns.Add(1)
	defer s.metrics.tcpConns.Add(-1)
	var wmu sync.Mutex
	var queries sync.WaitGroup
	defer queries.Wait()
	write := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		var l [2]byte
		binary.BigEndian.PutUint16(l[:], uint16(len(b)))
		_, _ = (&net.Buffers{l[:], b}).WriteTo(c)
	}
	share := make(chan struct{}, s.cfg.MaxInFlightPerClient)
	r := bufio.NewReaderSize(c, 4096)
	var nb [256]byte
	var q query
	out := make([]byte, 0, 2048)
	for {
		if !conns.setReading(c, true) {
			return
		}
		// The idle timeout covers the whole query: a client that sends
		// half a message holds its slot no longer than an idle one.
		_ = c.SetReadDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(l[:]))
		if n < 12 || n > s.cfg.MaxMessageSize {
			s.metrics.query(0, OutcomeDropped)
			return
		}
		req := make([]byte, n)
		if _, err := io.ReadFull(r, req); err != nil {
			return
		}
		if !conns.setReading(c, false) {
			return
		}
		if resp, ok := s.fast(req, out[:0], &nb, &q, false); ok {
			write(resp)
			continue
		}
		// A connection's share of the forwarding slots: past it, the next
		// query is not read until one is answered.
		select {
		case share <- struct{}{}:
		case <-work.Done():
			return
		}
		select {
		case s.inflight <- struct{}{}:
		case <-work.Done():
			return
		}
		queries.Add(1)
		conns.begin(c)
		go func() {
			defer queries.Done()
			defer conns.end(c)
			defer func() { <-s.inflight; <-share }()
			if resp := s.handle(work, req, true); resp != nil {
				write(resp)
			}
		}()
	}
}

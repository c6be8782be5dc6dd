package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Upstream UDP sockets are shared by concurrent queries rather than opened
// per query: a fresh socket (socket, connect, epoll registration, close)
// was about 40 % of a forwarded query's CPU. What a fresh socket per query
// gave, a source port an off-path forger must guess, is kept by these
// rules (docs/dns.md, "Spoofing resistance", has the reasoning):
//
//   - each socket is connected to its upstream, so the kernel delivers only
//     datagrams from that address and port;
//   - the kernel picks each socket's source port at random from the
//     ephemeral range, and a socket is used for new queries for at most
//     poolMaxAge or poolMaxUses queries, whichever comes first, then
//     closed once its last query is answered;
//   - a query picks one of the sockets at random and gets a random ID that
//     no other query pending on that socket holds, so an answer is matched
//     to exactly one query, and only if its question is that query's.
const (
	poolSockets = 8
	poolMaxAge  = time.Second
	poolMaxUses = 256
	// poolReadBuf is the buffer an upstream answer is read into; an answer
	// that fills it is treated as truncated (shunt asks for at most
	// ednsBufSize bytes) and fetched again over TCP.
	poolReadBuf = 4096
	// poolBatch is how many answers one read takes. Small: sockets are
	// replaced about every 256 queries and a retired one lives on, with its
	// buffers, until its last query ends (up to QueryTimeout), so under a
	// flood hundreds of them exist at once.
	poolBatch = 4
)

// errPoolClosed is returned to queries still waiting when a pool closes.
var errPoolClosed = errors.New("upstream socket pool closed")

// udpPool is the set of UDP sockets used to ask one upstream.
type udpPool struct {
	dial   string
	dialer *net.Dialer
	mu     sync.Mutex
	socks  [poolSockets]*poolSock
	closed bool
}

func newUDPPool(dial string, dialer *net.Dialer) *udpPool {
	return &udpPool{dial: dial, dialer: dialer}
}

// poolSock is one connected socket, its reader goroutine and the queries
// waiting for answers on it.
type poolSock struct {
	conn *net.UDPConn
	mu   sync.Mutex
	// pending maps a query ID to the query waiting for it.
	pending map[uint16]*poolWaiter
	uses    int
	retired bool // takes no new query; closed when pending is empty
	closed  bool
	timer   *time.Timer
}

// poolWaiter is one query waiting for its answer.
type poolWaiter struct {
	question []byte          // the query's question section, as sent
	answers  chan poolAnswer // answers whose ID and question match, or an error
}

// poolAnswer is an upstream's answer (b) or why none will come (err).
type poolAnswer struct {
	b   []byte
	err error
}

// register picks a socket and an ID for a query whose question section
// (wire form) is question. The caller must call done when it stops waiting.
func (p *udpPool) register(ctx context.Context, question []byte) (*poolSock, uint16, *poolWaiter, error) {
	slot := rand.IntN(poolSockets)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, 0, nil, errPoolClosed
	}
	s := p.socks[slot]
	w := &poolWaiter{question: question, answers: make(chan poolAnswer, 2)}
	if s != nil {
		if id, ok := s.add(w); ok {
			p.mu.Unlock()
			return s, id, w, nil
		}
	}
	// No socket in this slot, or it has served its time: open another.
	// The pool lock is held while dialing, which for UDP is local work
	// (socket, bind to a random port, connect): queries for this upstream
	// wait a few microseconds, and never two sockets are opened for a slot.
	defer p.mu.Unlock()
	ns, err := p.open(ctx)
	if err != nil {
		return nil, 0, nil, err
	}
	p.socks[slot] = ns
	id, _ := ns.add(w)
	return ns, id, w, nil
}

// open dials a new socket and starts its reader. Called with p.mu held.
func (p *udpPool) open(ctx context.Context) (*poolSock, error) {
	c, err := p.dialer.DialContext(ctx, "udp", p.dial)
	if err != nil {
		return nil, fmt.Errorf("dial udp: %w", err)
	}
	uc, ok := c.(*net.UDPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("dial udp %s: not a UDP socket", p.dial)
	}
	s := &poolSock{conn: uc, pending: map[uint16]*poolWaiter{}}
	// Retire by age even when no further query comes, so that no port
	// stays open longer than poolMaxAge plus its last query.
	s.timer = time.AfterFunc(poolMaxAge, s.retire)
	go s.read()
	return s, nil
}

// add registers w under a random ID no other pending query of s holds; it
// reports false when s takes no new query.
func (s *poolSock) add(w *poolWaiter) (uint16, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retired || s.closed {
		return 0, false
	}
	if s.uses++; s.uses >= poolMaxUses {
		s.retired = true // this query is its last
	}
	for {
		// math/rand/v2's top-level generator is ChaCha8 seeded from the
		// kernel, unpredictable to another process, and costs no system
		// call.
		id := uint16(rand.Uint32())
		if _, taken := s.pending[id]; !taken {
			s.pending[id] = w
			return id, true
		}
	}
}

// done deregisters the query with ID id; the last query of a retired
// socket closes it.
func (s *poolSock) done(id uint16) {
	s.mu.Lock()
	delete(s.pending, id)
	closeNow := s.retired && !s.closed && len(s.pending) == 0
	if closeNow {
		s.closed = true
	}
	s.mu.Unlock()
	if closeNow {
		s.timer.Stop()
		s.conn.Close()
	}
}

// retire stops s taking new queries and closes it if none is pending.
func (s *poolSock) retire() {
	s.mu.Lock()
	s.retired = true
	closeNow := !s.closed && len(s.pending) == 0
	if closeNow {
		s.closed = true
	}
	s.mu.Unlock()
	if closeNow {
		s.conn.Close()
	}
}

// fail ends every pending query with err.
func (s *poolSock) fail(err error) {
	s.mu.Lock()
	for _, w := range s.pending {
		select {
		case w.answers <- poolAnswer{err: err}:
		default:
		}
	}
	s.mu.Unlock()
}

// read delivers the answers arriving on s to the queries they answer, in
// batches (one recvmmsg for all the answers waiting), until s is closed.
func (s *poolSock) read() {
	var bc batchConn
	if la, _ := s.conn.LocalAddr().(*net.UDPAddr); la != nil && la.IP.To4() != nil {
		bc = ipv4.NewPacketConn(s.conn)
	} else {
		bc = ipv6.NewPacketConn(s.conn)
	}
	msgs := make([]ipv4.Message, poolBatch)
	bufs := make([][]byte, poolBatch)
	for i := range msgs {
		bufs[i] = make([]byte, poolReadBuf)
		msgs[i].Buffers = [][]byte{bufs[i]}
	}
	for {
		n, err := bc.ReadBatch(msgs, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				s.fail(errPoolClosed)
				return
			}
			// ICMP port unreachable (ECONNREFUSED) and the like concern
			// the upstream, not one query: every query on this socket
			// fails now rather than at its timeout, and the socket is
			// replaced.
			s.fail(fmt.Errorf("read over udp: %w", err))
			s.retire()
			if !errors.Is(err, syscall.ECONNREFUSED) {
				time.Sleep(time.Millisecond) // never spin on a broken socket
			}
			continue
		}
		for i := 0; i < n; i++ {
			s.deliver(bufs[i][:msgs[i].N])
		}
	}
}

// deliver hands b to the query it answers: the one pending under its ID,
// if b is a response and its question is that query's (the name compared
// without regard to case). Anything else is dropped: not ours, late, or
// forged.
func (s *poolSock) deliver(b []byte) {
	if len(b) < 12 || b[2]&0x80 == 0 || binary.BigEndian.Uint16(b[4:]) != 1 {
		return
	}
	id := binary.BigEndian.Uint16(b)
	s.mu.Lock()
	w := s.pending[id]
	s.mu.Unlock()
	if w == nil || !sameQuestionWire(b[12:], w.question) {
		return
	}
	select {
	case w.answers <- poolAnswer{b: append([]byte(nil), b...)}:
	default: // it has an answer to look at already
	}
}

// sameQuestionWire reports whether msg (a message from offset 12 on)
// starts with question q: the name equal but for ASCII case (label lengths
// are at most 63, below 'A', so folding them is harmless), type and class
// equal.
func sameQuestionWire(msg, q []byte) bool {
	if len(msg) < len(q) || len(q) < 5 {
		return false
	}
	name := len(q) - 4
	for i := 0; i < name; i++ {
		a, b := msg[i], q[i]
		if a != b && lowerASCII(a) != lowerASCII(b) {
			return false
		}
	}
	return string(msg[name:len(q)]) == string(q[name:])
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// close closes every socket of the pool; queries still waiting fail.
func (p *udpPool) close() {
	p.mu.Lock()
	p.closed = true
	socks := p.socks
	p.socks = [poolSockets]*poolSock{}
	p.mu.Unlock()
	for _, s := range socks {
		if s == nil {
			continue
		}
		s.mu.Lock()
		s.retired, s.closed = true, true
		s.mu.Unlock()
		s.timer.Stop()
		s.conn.Close()
	}
}

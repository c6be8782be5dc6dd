package controlplane

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Stream bounds: a proxy holds one stream, an agent one more; a host runs
// a few dozen of them at most. Beyond these, a peer (or all of them) is
// refused rather than allowed to grow the server without bound.
const (
	DefaultMaxStreams        = 4096
	DefaultMaxStreamsPerPeer = 64
)

// streamLimits counts open streams per peer address and in total.
type streamLimits struct {
	mu      sync.Mutex
	total   int
	perPeer map[string]int
	owner   map[streamKey]string
}

// peerKey is the stream's remote host: per host rather than per
// connection, since one process can open any number of connections.
func peerKey(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	if tcp, ok := p.Addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	return p.Addr.Network() + ":" + p.Addr.String()
}

func (s *Server) admit(ctx context.Context, k streamKey) error {
	l := &s.limits
	max, perPeer := s.opts.MaxStreams, s.opts.MaxStreamsPerPeer
	if max <= 0 {
		max = DefaultMaxStreams
	}
	if perPeer <= 0 {
		perPeer = DefaultMaxStreamsPerPeer
	}
	who := peerKey(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPeer == nil {
		l.perPeer, l.owner = map[string]int{}, map[streamKey]string{}
	}
	switch {
	case l.total >= max:
		s.limitLog.log(s.log, "xDS stream refused: too many streams", "peer", who, "limit", max)
		return status.Errorf(codes.ResourceExhausted, "the control plane serves at most %d streams", max)
	case l.perPeer[who] >= perPeer:
		s.limitLog.log(s.log, "xDS stream refused: too many streams from one peer", "peer", who, "limit", perPeer)
		return status.Errorf(codes.ResourceExhausted, "at most %d streams per peer", perPeer)
	}
	l.total++
	l.perPeer[who]++
	l.owner[k] = who
	return nil
}

func (s *Server) release(k streamKey) {
	l := &s.limits
	l.mu.Lock()
	defer l.mu.Unlock()
	who, ok := l.owner[k]
	if !ok {
		return
	}
	delete(l.owner, k)
	l.total--
	if l.perPeer[who]--; l.perPeer[who] == 0 {
		delete(l.perPeer, who)
	}
}

// rateLog logs at most one line per interval for one kind of event and
// says how many it left out, so that a flood of streams cannot flood the
// log (and the disk) too.
type rateLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// log writes a refusal: one a second at most.
func (r *rateLog) log(l *slog.Logger, msg string, args ...any) {
	r.emit(l, slog.LevelWarn, time.Second, msg, args)
}

// info writes a per-node line: ten a second at most.
func (r *rateLog) info(l *slog.Logger, msg string, args ...any) {
	r.emit(l, slog.LevelInfo, 100*time.Millisecond, msg, args)
}

func (r *rateLog) emit(l *slog.Logger, level slog.Level, every time.Duration, msg string, args []any) {
	r.mu.Lock()
	if time.Since(r.last) < every {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	n := r.suppressed
	r.last, r.suppressed = time.Now(), 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "similar_lines_suppressed", n)
	}
	l.Log(context.Background(), level, msg, args...)
}

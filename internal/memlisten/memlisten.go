// Package memlisten is a net.Listener inside the process: connections are
// in-memory pipes, so a server behind it is reachable by no other process
// (no port in /proc/net/tcp, no socket file).
package memlisten

import (
	"context"
	"errors"
	"net"
	"sync"
)

// Listener accepts the connections made by its Dial.
type Listener struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

// New returns an open listener.
func New() *Listener {
	return &Listener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

type addr struct{}

func (addr) Network() string { return "memory" }
func (addr) String() string  { return "in-process" }

// Addr names the listener in logs.
func (l *Listener) Addr() net.Addr { return addr{} }

// Accept waits for the next Dial.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close makes Accept and later Dials fail; open connections stay.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Dial connects to the listener; its signature fits grpc.WithContextDialer.
func (l *Listener) Dial(ctx context.Context, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.closed:
		return nil, errors.New("memlisten: listener closed")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

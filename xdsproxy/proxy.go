// Package xdsproxy is shunt's xDS proxy: it holds the node's one ADS stream
// to the control plane and serves it to the local Envoy (over a Unix socket)
// and to shunt's own xDS client (in-process).
//
// Control planes such as kuma-cp refuse a second stream for a node, so
// Envoy and shunt cannot both subscribe. The proxy forwards Envoy's
// requests, ACKs and NACKs upstream and the responses to Envoy unchanged;
// shunt's client sees a response only once Envoy has accepted it, so a
// version Envoy rejects is never adopted by shunt either. With no Envoy
// connected, shunt's client is the one that answers (direct mode). The last
// responses are kept: a reconnecting Envoy gets them at once, and while the
// control plane is unreachable both keep what they have. The upstream
// stream is state of the world or, with Config.DeltaUpstream, incremental
// (see deltaUpstream); downstreams may speak either.
package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/shunt-dev/shunt/xdsclient"
)

// Config configures a Proxy.
type Config struct {
	// Upstream opens a stream to the control plane; the stream ends
	// with ctx. xdsclient.OpenStream with the control plane's settings.
	Upstream func(ctx context.Context) (xdsclient.ADSStream, error)
	// DeltaUpstream, instead of Upstream, opens an incremental (delta)
	// ADS stream: xdsclient.OpenDeltaStream. The proxy keeps the sets
	// the deltas build up and serves its downstreams as it does for a
	// SotW upstream.
	DeltaUpstream func(ctx context.Context) (xdsclient.DeltaADSStream, error)
	// Server names the control plane in logs.
	Server string
	// NodeID is this node's id; a downstream that names another is
	// refused.
	NodeID string
	// Backoff is the upstream reconnect schedule (zero: xdsclient's
	// defaults).
	Backoff xdsclient.BackoffConfig
	Logger  *slog.Logger
}

// Status is what the proxy knows of its streams.
type Status struct {
	// Connected is true while the upstream stream is open and has
	// answered.
	Connected bool
	// Reconnects counts upstream streams opened after the first.
	Reconnects int
	// LastError is why the last upstream stream ended or failed to open.
	LastError string
	// EnvoyConnected says a local proxy is connected to the socket.
	EnvoyConnected bool
	// LastEnvoyNACK is the error detail of the last NACK the local proxy
	// sent upstream.
	LastEnvoyNACK string
}

type (
	request  = discoveryv3.DiscoveryRequest
	response = discoveryv3.DiscoveryResponse
)

// Proxy is the xDS proxy. Create it with New, start Run, then attach
// downstreams with Serve (Envoy) and LocalStream (shunt's client).
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	events chan func()
	done   chan struct{}

	mu     sync.Mutex
	status Status

	// downLog and refuseLog bound the per-stream log lines.
	downLog, refuseLog rateLimit

	// Owned by the Run loop.
	types   map[string]*typeState
	order   []string // type URLs in the order first subscribed
	up      *upstream
	gen     int
	opened  int
	fails   int
	dialing bool
	envoy   *downstream
	local   *downstream
	// envoyNode and localNode are the nodes the downstreams sent (see
	// upstreamNode).
	envoyNode, localNode *corev3.Node
}

// typeState is what the proxy keeps of one resource type.
type typeState struct {
	// last is the newest response from upstream; accepted the newest one
	// a downstream ACKed (what a reconnecting Envoy is given).
	last, accepted *response
	ackedVersion   string
	// names is the subscription last sent upstream (nil: wildcard).
	names []string
}

// upstream is one stream to the control plane.
type upstream struct {
	gen      int
	stream   xdsclient.ADSStream
	cancel   context.CancelFunc
	node     *corev3.Node
	nodeSent bool
	answered bool
	// subscribed says the type was requested on this stream; nonce is
	// the last response's, pending says it has no ACK/NACK yet.
	subscribed map[string]bool
	nonce      map[string]string
	pending    map[string]bool
}

// New checks cfg.
func New(cfg Config) (*Proxy, error) {
	if cfg.Upstream != nil && cfg.DeltaUpstream != nil {
		return nil, errors.New("xdsproxy: give Upstream or DeltaUpstream, not both")
	}
	if cfg.DeltaUpstream != nil {
		cfg.Upstream = newDeltaState().wrap(cfg.DeltaUpstream)
	}
	if cfg.Upstream == nil {
		return nil, errors.New("xdsproxy: no upstream")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("xdsproxy: NodeID is empty")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Proxy{
		cfg:    cfg,
		log:    cfg.Logger,
		events: make(chan func()),
		done:   make(chan struct{}),
		types:  map[string]*typeState{},
		// Ten lines a second for streams coming and going, one for
		// refusals.
		downLog:   rateLimit{every: 100 * time.Millisecond},
		refuseLog: rateLimit{every: time.Second},
	}, nil
}

// Status returns a copy of the proxy's status.
func (p *Proxy) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

func (p *Proxy) setStatus(f func(*Status)) {
	p.mu.Lock()
	f(&p.status)
	p.mu.Unlock()
}

// do runs f on the loop; false if the proxy has stopped.
func (p *Proxy) do(f func()) bool {
	select {
	case p.events <- f:
		return true
	case <-p.done:
		return false
	}
}

// Run is the proxy's loop: it keeps the upstream stream while a downstream
// is attached and routes messages between them, until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	defer func() {
		close(p.done)
		if p.up != nil {
			p.up.cancel()
		}
		for _, d := range []*downstream{p.envoy, p.local} {
			if d != nil {
				d.out.close()
			}
		}
		p.setStatus(func(s *Status) { s.Connected = false })
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-p.events:
			f()
			p.ensureUpstream(ctx)
		}
	}
}

func (p *Proxy) typ(url string) *typeState {
	ts, ok := p.types[url]
	if !ok {
		ts = &typeState{}
		p.types[url] = ts
		p.order = append(p.order, url)
	}
	return ts
}

// ensureUpstream opens the upstream stream when a downstream has told the
// node, after the backoff when the last attempt failed.
func (p *Proxy) ensureUpstream(ctx context.Context) {
	if p.up != nil || p.dialing || ctx.Err() != nil {
		return
	}
	node := p.upstreamNode()
	if node == nil {
		return
	}
	p.dialing = true
	p.gen++
	gen := p.gen
	var wait time.Duration
	if p.fails > 0 {
		wait = p.cfg.Backoff.Delay(p.fails - 1)
	}
	go func() {
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		sctx, cancel := context.WithCancel(ctx)
		stream, err := p.cfg.Upstream(sctx)
		if err != nil {
			cancel()
			p.do(func() { p.upstreamFailed(gen, err) })
			return
		}
		if !p.do(func() { p.upstreamOpened(gen, stream, cancel, node) }) {
			cancel()
		}
	}()
}

// upstreamNode is the node the upstream stream identifies as: shunt's own
// (its --node-id and metadata, which the bootstrap of the Envoy it runs
// carries too), the local proxy's only when shunt's client is not there.
// The stream is never reopened to change it: kuma-cp refuses a node's new
// stream for 10 s after its last one closed.
func (p *Proxy) upstreamNode() *corev3.Node {
	if p.localNode != nil {
		return p.localNode
	}
	return p.envoyNode
}

func (p *Proxy) upstreamFailed(gen int, err error) {
	if gen != p.gen {
		return
	}
	p.dialing = false
	p.fails++
	p.setStatus(func(s *Status) { s.LastError = err.Error() })
	p.log.Warn("xDS upstream unreachable; keeping the last configuration", "server", p.cfg.Server, "error", err)
}

func (p *Proxy) upstreamOpened(gen int, stream xdsclient.ADSStream, cancel context.CancelFunc, node *corev3.Node) {
	p.dialing = false
	if gen != p.gen {
		cancel()
		return
	}
	p.opened++
	if p.opened > 1 {
		p.setStatus(func(s *Status) { s.Reconnects++ })
	}
	u := &upstream{gen: gen, stream: stream, cancel: cancel, node: node,
		subscribed: map[string]bool{}, nonce: map[string]string{}, pending: map[string]bool{}}
	p.up = u
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				p.do(func() { p.upstreamEnded(u, err) })
				return
			}
			if !p.do(func() { p.fromUpstream(u, resp) }) {
				return
			}
		}
	}()
	// Subscribe again to everything a downstream asked for, at the
	// versions accepted, so that an unchanged configuration is not sent
	// again by servers that compare versions.
	for _, url := range p.order {
		ts := p.types[url]
		names := ts.names
		if a := p.answerer(url); a != nil {
			names = a.subs[url]
		}
		p.sendUp(&request{TypeUrl: url, ResourceNames: names, VersionInfo: ts.ackedVersion})
	}
}

func (p *Proxy) upstreamEnded(u *upstream, err error) {
	if p.up != u {
		return
	}
	u.cancel()
	p.up = nil
	// After a stream that worked, the first wait of the schedule; after
	// one that never answered, the next.
	p.fails++
	p.setStatus(func(s *Status) { s.Connected = false; s.LastError = err.Error() })
	p.log.Warn("xDS upstream stream ended; Envoy and shunt keep their configuration, reconnecting", "server", p.cfg.Server, "error", err)
}

func (p *Proxy) sendUp(req *request) {
	u := p.up
	if u == nil {
		return
	}
	req = proto.Clone(req).(*request)
	req.Node = nil
	if !u.nodeSent {
		req.Node = u.node
		u.nodeSent = true
	}
	u.subscribed[req.GetTypeUrl()] = true
	p.typ(req.GetTypeUrl()).names = req.GetResourceNames()
	if err := u.stream.Send(req); err != nil {
		// Recv reports the stream's end.
		p.log.Debug("send to xDS upstream", "error", err)
	}
}

// answerer is the downstream whose verdicts go upstream for a type: Envoy
// when it subscribes to it, else shunt's client.
func (p *Proxy) answerer(url string) *downstream {
	if p.envoy != nil && p.envoy.wants(url) {
		return p.envoy
	}
	if p.local != nil && p.local.wants(url) {
		return p.local
	}
	return nil
}

func (p *Proxy) fromUpstream(u *upstream, resp *response) {
	if p.up != u {
		return
	}
	if !u.answered {
		u.answered = true
		p.fails = 0
		p.setStatus(func(s *Status) { s.Connected = true })
		p.log.Info("connected to xDS server", "server", p.cfg.Server, "node", p.cfg.NodeID)
	}
	url := resp.GetTypeUrl()
	ts := p.typ(url)
	ts.last = resp
	u.nonce[url] = resp.GetNonce()
	u.pending[url] = true
	ans := p.answerer(url)
	if p.envoy != nil && p.envoy.wants(url) {
		p.envoy.out.push(resp)
	}
	// shunt's client sees what Envoy accepted, or answers itself.
	if ans == p.local && ans != nil {
		p.local.out.push(resp)
	}
}

func (p *Proxy) fromDownstream(d *downstream, req *request) {
	if !d.attached {
		return
	}
	url := req.GetTypeUrl()
	ts := p.typ(url)
	first := !d.wants(url)
	d.subs[url] = req.GetResourceNames()
	u := p.up
	if first && req.GetResponseNonce() == "" {
		// A (re)connected downstream: what the proxy holds, at once.
		p.replay(d, url)
	}
	if u != nil && req.GetResponseNonce() != "" && req.GetResponseNonce() == u.nonce[url] && u.pending[url] && p.answerer(url) == d {
		u.pending[url] = false
		if req.GetErrorDetail() == nil {
			ts.accepted, ts.ackedVersion = ts.last, req.GetVersionInfo()
			if d == p.envoy && p.local != nil && p.local.wants(url) {
				p.local.out.push(ts.last)
			}
		} else {
			p.log.Warn("configuration rejected (NACK), forwarded to the control plane; the last accepted version stays",
				"by", d.kind, "type", url, "rejected_version", ts.last.GetVersionInfo(), "kept_version", req.GetVersionInfo(), "error", req.GetErrorDetail().GetMessage())
			if d == p.envoy {
				p.setStatus(func(s *Status) { s.LastEnvoyNACK = req.GetErrorDetail().GetMessage() })
			}
		}
		p.sendUp(req)
		return
	}
	// Not an answer to the pending response: a replay's ACK, a stale
	// nonce, or a (re)subscription. Only a changed subscription goes up.
	if p.answerer(url) != d || u == nil {
		return
	}
	if u.subscribed[url] && slices.Equal(ts.names, req.GetResourceNames()) {
		return
	}
	p.sendUp(&request{TypeUrl: url, ResourceNames: req.GetResourceNames(), VersionInfo: ts.ackedVersion, ResponseNonce: u.nonce[url]})
}

// replay gives a downstream that just subscribed to url what the proxy
// holds: the accepted response, then a newer one still awaiting its
// verdict if this downstream is now the one to give it. shunt's client is
// never handed a response Envoy has yet to accept.
func (p *Proxy) replay(d *downstream, url string) {
	ts := p.types[url]
	if ts.accepted != nil {
		d.out.push(ts.accepted)
	}
	if u := p.up; u != nil && u.pending[url] && ts.last != nil && ts.last != ts.accepted && p.answerer(url) == d {
		d.out.push(ts.last)
	}
}

func (p *Proxy) attach(d *downstream) {
	d.attached = true
	switch d.kind {
	case kindEnvoy:
		if old := p.envoy; old != nil {
			// An Envoy has one ADS stream; a new one (hot restart, a
			// reconnect before the old stream timed out) replaces it.
			p.detach(old)
		}
		p.envoy = d
		p.envoyNode = d.node
		p.setStatus(func(s *Status) { s.EnvoyConnected = true })
		if ok, n := p.downLog.allow(); ok {
			p.log.Info("local proxy connected", "node", d.node.GetId(), "similar_lines_suppressed", n)
		}
	case kindLocal:
		if old := p.local; old != nil {
			p.detach(old)
		}
		p.local = d
		p.localNode = d.node
	}
}

func (p *Proxy) detach(d *downstream) {
	if !d.attached {
		return
	}
	d.attached = false
	d.out.close()
	switch d {
	case p.envoy:
		p.envoy = nil
		p.setStatus(func(s *Status) { s.EnvoyConnected = false })
		if ok, n := p.downLog.allow(); ok {
			p.log.Info("local proxy disconnected; shunt answers the control plane itself until it returns", "similar_lines_suppressed", n)
		}
		// What Envoy left unanswered, shunt's client answers now.
		if u := p.up; u != nil && p.local != nil {
			for _, url := range p.order {
				if u.pending[url] && p.local.wants(url) {
					p.local.out.push(p.types[url].last)
				}
			}
		}
	case p.local:
		p.local = nil
	}
}

const (
	kindEnvoy = "envoy"
	kindLocal = "shunt"
)

// downstream is one client of the proxy. subs and attached belong to the
// loop; out is safe to use anywhere.
type downstream struct {
	kind     string
	node     *corev3.Node
	subs     map[string][]string
	attached bool
	out      *outbox
}

func newDownstream(kind string, node *corev3.Node) *downstream {
	return &downstream{kind: kind, node: node, subs: map[string][]string{}, out: newOutbox()}
}

func (d *downstream) wants(url string) bool {
	_, ok := d.subs[url]
	return ok
}

// checkNode refuses a downstream's first request that does not name this
// node: the socket serves one node's configuration, never another's.
func (p *Proxy) checkNode(req *request) error {
	n := req.GetNode()
	if n == nil || n.GetId() == "" {
		return errors.New("the first request must carry the node")
	}
	if n.GetId() != p.cfg.NodeID {
		return fmt.Errorf("node id %q: this proxy serves node %q", n.GetId(), p.cfg.NodeID)
	}
	return nil
}

// outbox queues responses for one downstream. SotW servers send a type's
// next response only after the previous one's ACK, so it stays short.
type outbox struct {
	mu     sync.Mutex
	q      []*response
	notify chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newOutbox() *outbox {
	return &outbox{notify: make(chan struct{}, 1), closed: make(chan struct{})}
}

func (o *outbox) push(r *response) {
	o.mu.Lock()
	o.q = append(o.q, r)
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

func (o *outbox) close() { o.once.Do(func() { close(o.closed) }) }

// pop waits for the next response; nil when ctx ends or the box closes.
func (o *outbox) pop(ctx context.Context) *response {
	for {
		o.mu.Lock()
		if len(o.q) > 0 {
			r := o.q[0]
			o.q[0] = nil
			o.q = o.q[1:]
			o.mu.Unlock()
			return r
		}
		o.mu.Unlock()
		select {
		case <-o.notify:
		case <-o.closed:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/shunt-dev/shunt/xdsclient"
)

// Serve serves ADS to the local proxy on ln (the socket Listen made) until
// ctx ends, state of the world or incremental (delta) as the proxy asks,
// whichever the upstream stream is (Config.DeltaUpstream).
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	g := grpc.NewServer(
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// One Envoy, one stream; a few more for a hot restart's overlap.
		grpc.MaxConcurrentStreams(8),
		grpc.MaxRecvMsgSize(16<<20),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, adsServer{p: p})
	stop := context.AfterFunc(ctx, g.Stop)
	defer stop()
	if err := g.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve xDS to the local proxy on %s: %w", ln.Addr(), err)
	}
	return nil
}

type adsServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	p *Proxy
}

// DeltaAggregatedResources serves an Envoy whose ADS is incremental over the
// same one upstream stream (see deltaAdapter).
func (s adsServer) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	a := newDeltaAdapter()
	return serveDownstream(s.p, stream,
		(*discoveryv3.DeltaDiscoveryRequest).GetNode, a.request, a.response)
}

func (s adsServer) StreamAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return serveDownstream(s.p, stream,
		(*discoveryv3.DiscoveryRequest).GetNode,
		func(r *discoveryv3.DiscoveryRequest) *discoveryv3.DiscoveryRequest { return r },
		func(r *discoveryv3.DiscoveryResponse) (*discoveryv3.DiscoveryResponse, error) { return r, nil })
}

// adsStream is the server side of an ADS stream, SotW or incremental.
type adsStream[Req, Resp any] interface {
	Recv() (Req, error)
	Send(Resp) error
	Context() context.Context
}

// serveDownstream serves one stream of the local proxy: its first request
// must name this node; its requests reach the proxy in the SotW form
// (toSotW), and the responses queued for it leave in the stream's own form
// (fromSotW).
func serveDownstream[Req, Resp any](p *Proxy, stream adsStream[Req, Resp], node func(Req) *corev3.Node,
	toSotW func(Req) *discoveryv3.DiscoveryRequest, fromSotW func(*discoveryv3.DiscoveryResponse) (Resp, error)) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := p.checkNode(&discoveryv3.DiscoveryRequest{Node: node(first)}); err != nil {
		if ok, n := p.refuseLog.allow(); ok {
			p.log.Warn("refused a local proxy's stream", "error", err, "similar_lines_suppressed", n)
		}
		return status.Error(codes.PermissionDenied, err.Error())
	}
	d := newDownstream(kindEnvoy, node(first))
	req := toSotW(first)
	if !p.do(func() { p.attach(d); p.fromDownstream(d, req) }) {
		return status.Error(codes.Unavailable, "shunt's xDS proxy is stopping")
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		defer cancel()
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			req := toSotW(r)
			if !p.do(func() { p.fromDownstream(d, req) }) {
				return
			}
		}
	}()
	defer p.do(func() { p.detach(d) })
	for {
		r := d.out.pop(ctx)
		if r == nil {
			if ctx.Err() != nil {
				return nil
			}
			return status.Error(codes.Aborted, "replaced by a newer stream from the local proxy")
		}
		out, err := fromSotW(r)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

// LocalStream is shunt's own client's stream (xdsclient.Config.Stream): in
// process, it sees the responses the local proxy accepted, or all of them
// while no local proxy is connected.
func (p *Proxy) LocalStream(ctx context.Context) (xdsclient.ADSStream, error) {
	return &localStream{p: p, ctx: ctx}, nil
}

type localStream struct {
	p   *Proxy
	ctx context.Context
	d   *downstream
}

func (l *localStream) Send(req *discoveryv3.DiscoveryRequest) error {
	p := l.p
	if l.d == nil {
		if err := p.checkNode(req); err != nil {
			return err
		}
		l.d = newDownstream(kindLocal, req.GetNode())
		d := l.d
		context.AfterFunc(l.ctx, func() { p.do(func() { p.detach(d) }) })
		if !p.do(func() { p.attach(d) }) {
			return errors.New("xDS proxy stopped")
		}
	}
	d := l.d
	if !p.do(func() { p.fromDownstream(d, req) }) {
		return errors.New("xDS proxy stopped")
	}
	return nil
}

func (l *localStream) Recv() (*discoveryv3.DiscoveryResponse, error) {
	if l.d == nil {
		<-l.ctx.Done()
		return nil, l.ctx.Err()
	}
	r := l.d.out.pop(l.ctx)
	if r == nil {
		if l.ctx.Err() != nil {
			return nil, l.ctx.Err()
		}
		return nil, errors.New("xDS proxy stopped")
	}
	return r, nil
}

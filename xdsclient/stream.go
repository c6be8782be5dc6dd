package xdsclient

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/wire"
)

// Type URLs of the resources the client subscribes to.
const (
	ListenerType = resourcev3.ListenerType
	ClusterType  = resourcev3.ClusterType
	EndpointType = resourcev3.EndpointType
)

// MetadataMesh is the node metadata key carrying the mesh.
const MetadataMesh = wire.MetadataMesh

// session is one ADS stream: subscribe, then answer every response until
// the stream or ctx ends. answered reports whether the server responded at
// all, which tells a working connection that broke from one that never
// worked.
func (c *Client) session(ctx context.Context) (answered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	open := c.cfg.Stream
	if open == nil {
		open = func(ctx context.Context) (ADSStream, error) { return OpenStream(ctx, c.cfg) }
	}
	stream, err := open(ctx)
	if err != nil {
		return false, err
	}
	s := &session{c: c, stream: stream, node: c.node()}
	if err := s.subscribe(); err != nil {
		return false, err
	}

	// Recv blocks; a goroutine feeds the loop so that it can also wait
	// for the configuration to settle.
	type received struct {
		resp *discoveryv3.DiscoveryResponse
		err  error
	}
	recv := make(chan received)
	go func() {
		for {
			resp, err := stream.Recv()
			select {
			case recv <- received{resp, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return s.answered, ctx.Err()
		case <-settle.C:
			s.publish()
		case r := <-recv:
			if r.err != nil {
				err := r.err
				if errors.Is(err, io.EOF) {
					err = errors.New("server closed the stream")
				}
				return s.answered, fmt.Errorf("receive from %s: %w", c.cfg.Server, err)
			}
			if !s.answered {
				s.answered = true
				c.mu.Lock()
				c.status.Connected = true
				c.mu.Unlock()
				c.log.Info("connected to xDS server", "server", c.cfg.Server, "node", c.cfg.NodeID)
			}
			accepted, err := s.handle(r.resp)
			if err != nil {
				return true, err
			}
			if !accepted {
				continue
			}
			// A change usually comes as several responses (clusters,
			// then listeners). Publish at once when every type has the
			// same version, as servers that version the whole snapshot
			// send; otherwise when no further response came for
			// SettleDelay, so that a half-applied change is not seen.
			if s.consistent() {
				settle.Stop()
				s.publish()
			} else {
				settle.Reset(SettleDelay)
			}
		}
	}
}

// ADSStream is the client side of an ADS stream: a gRPC stream, or the
// xDS proxy's in-process one.
type ADSStream interface {
	Send(*discoveryv3.DiscoveryRequest) error
	Recv() (*discoveryv3.DiscoveryResponse, error)
}

// DefaultKeepaliveTime is how often the client pings an idle connection:
// above the control plane's 10 s enforcement minimum, and it finds a dead
// server behind a silent network within a minute.
const DefaultKeepaliveTime = 30 * time.Second

// OpenStream dials cfg.Server (TLS, token, keepalive as configured) and
// opens an ADS stream on it; the connection closes when ctx ends.
func OpenStream(ctx context.Context, cfg Config) (ADSStream, error) {
	ctx, conn, err := dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open ADS stream to %s: %w", cfg.Server, err)
	}
	context.AfterFunc(ctx, func() { conn.Close() })
	return hintStream{stream, cfg}, nil
}

// DeltaADSStream is the client side of an incremental (delta) ADS stream.
type DeltaADSStream interface {
	Send(*discoveryv3.DeltaDiscoveryRequest) error
	Recv() (*discoveryv3.DeltaDiscoveryResponse, error)
}

// OpenDeltaStream is OpenStream for incremental ADS
// (DeltaAggregatedResources), with the same dialing, TLS, token and
// keepalive; the connection closes when ctx ends.
func OpenDeltaStream(ctx context.Context, cfg Config) (DeltaADSStream, error) {
	ctx, conn, err := dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open delta ADS stream to %s: %w", cfg.Server, err)
	}
	context.AfterFunc(ctx, func() { conn.Close() })
	return deltaHintStream{stream, cfg}, nil
}

// dial makes the connection to cfg.Server and the context (with the token)
// its streams open with.
func dial(ctx context.Context, cfg Config) (context.Context, *grpc.ClientConn, error) {
	var creds credentials.TransportCredentials = insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS.Clone())
	}
	if cfg.TokenFile != "" {
		tok, err := readToken(cfg.TokenFile)
		if err != nil {
			return nil, nil, err
		}
		if !cfg.TokenRaw {
			tok = "Bearer " + tok
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", tok)
	}
	ka := cfg.KeepaliveTime
	if ka <= 0 {
		ka = DefaultKeepaliveTime
	}
	target := cfg.Server
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: ka, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// 10,000 ExternalServices make a 12 MB listener response; gRPC's
		// default 4 MB limit would refuse it forever.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256 << 20)),
	}
	if cfg.Dialer != nil {
		// An in-process server: no name resolution.
		target = "passthrough:///" + cfg.Server
		opts = append(opts, grpc.WithContextDialer(cfg.Dialer))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", cfg.Server, err)
	}
	return ctx, conn, nil
}

// SettleDelay is how long the client waits for the rest of a change whose
// parts carry different versions before publishing what it has.
const SettleDelay = 100 * time.Millisecond

// authHint says what to do about a refused authentication: kuma-cp, for
// one, answers a missing token with "token is malformed", which does not
// say that a token is wanted at all.
func authHint(cfg Config, err error) error {
	st, _ := grpcstatus.FromError(err)
	if st.Code() != codes.Unauthenticated && st.Code() != codes.PermissionDenied &&
		!strings.Contains(st.Message(), "authentication failed") {
		return err
	}
	if cfg.TokenFile == "" {
		return fmt.Errorf("the server refused the node's authentication and no token is configured (give the dataplane token with --xds-token-file): %w", err)
	}
	return fmt.Errorf("the server refused the token from %s: %w", cfg.TokenFile, err)
}

// hintStream adds authHint to the errors of a stream OpenStream opened, so
// that whoever holds the stream (the client, or the xDS proxy) reports a
// refused authentication the same way.
type hintStream struct {
	discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cfg Config
}

func (h hintStream) Recv() (*discoveryv3.DiscoveryResponse, error) {
	r, err := h.AggregatedDiscoveryService_StreamAggregatedResourcesClient.Recv()
	if err != nil {
		return nil, authHint(h.cfg, err)
	}
	return r, nil
}

// deltaHintStream is hintStream for a delta stream.
type deltaHintStream struct {
	discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	cfg Config
}

func (h deltaHintStream) Recv() (*discoveryv3.DeltaDiscoveryResponse, error) {
	r, err := h.AggregatedDiscoveryService_DeltaAggregatedResourcesClient.Recv()
	if err != nil {
		return nil, authHint(h.cfg, err)
	}
	return r, nil
}

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

func (c *Client) node() *corev3.Node {
	md := c.cfg.Metadata
	if md == nil {
		md = &structpb.Struct{Fields: map[string]*structpb.Value{MetadataMesh: structpb.NewStringValue(c.cfg.Mesh)}}
	}
	n := &corev3.Node{
		Id:            c.cfg.NodeID,
		Cluster:       c.cfg.Cluster,
		Metadata:      proto.Clone(md).(*structpb.Struct),
		UserAgentName: "shunt",
		// Servers that key on client features look for this one before
		// sending more than one resource type per stream.
		ClientFeatures: []string{"envoy.lb.does_not_support_overprovisioning"},
	}
	if c.cfg.Zone != "" {
		n.Locality = &corev3.Locality{Zone: c.cfg.Zone}
	}
	return n
}

// session is the state of one stream: what was accepted on it, per type.
// A new stream starts empty, so nothing is published until it has the
// whole configuration again.
type session struct {
	c        *Client
	stream   ADSStream
	node     *corev3.Node
	nodeSent bool
	answered bool

	// The accepted state, as the entries of each resource.
	listeners []*listenerEntry
	clusters  []*clusterEntry
	endpoints map[string]*endpointEntry
	// nameTables are Istio's NDS tables, with Config.NameTable.
	nameTables []*listenerEntry
	// memo keeps, per type, the entries of the last response received by
	// the hash of their bytes: a resource the next response repeats is not
	// decoded or validated again.
	memo map[string]map[resourceHash]any
	// candidate is the snapshot of the accepted state, built when the
	// last response was checked; publish hands it out.
	candidate *mesh.AgentSnapshot
	// versions holds the last accepted version per type URL.
	versions map[string]string
	// edsNames is the EDS subscription last sent; edsNonce the nonce of
	// the last EDS response; edsPending says a changed subscription has
	// not been answered yet.
	edsNames   []string
	edsNonce   string
	edsPending bool
}

func (s *session) subscribe() error {
	s.versions = map[string]string{}
	s.endpoints = map[string]*endpointEntry{}
	s.memo = map[string]map[resourceHash]any{}
	// An empty list is a wildcard subscription for listeners and clusters.
	if err := s.send(&discoveryv3.DiscoveryRequest{TypeUrl: ListenerType}); err != nil {
		return err
	}
	if err := s.send(&discoveryv3.DiscoveryRequest{TypeUrl: ClusterType}); err != nil {
		return err
	}
	if s.c.cfg.NameTable {
		return s.send(&discoveryv3.DiscoveryRequest{TypeUrl: NameTableType})
	}
	return nil
}

func (s *session) send(req *discoveryv3.DiscoveryRequest) error {
	// The node goes on the first request only, as Envoy's
	// set_node_on_first_message_only does; servers remember it.
	if !s.nodeSent {
		req.Node = s.node
		s.nodeSent = true
	}
	if err := s.stream.Send(req); err != nil {
		return fmt.Errorf("send %s request: %w", shortType(req.TypeUrl), err)
	}
	return nil
}

// handle answers a response with an ACK or a NACK. accepted says the
// stream's state changed and may be published.
func (s *session) handle(resp *discoveryv3.DiscoveryResponse) (accepted bool, err error) {
	typ := resp.GetTypeUrl()
	if typ != ListenerType && typ != ClusterType && typ != EndpointType && (typ != NameTableType || !s.c.cfg.NameTable) {
		s.c.log.Warn("ignoring response of a type not subscribed to", "type", typ)
		return false, nil
	}
	// Build the candidate state; the current one stays until it is good.
	listeners, clusters, endpoints, tables := s.listeners, s.clusters, s.endpoints, s.nameTables
	var snap *mesh.AgentSnapshot
	err = func() error {
		var err error
		switch typ {
		case ListenerType:
			listeners, err = decodeAll(s, resp, newListenerEntry)
		case ClusterType:
			clusters, err = decodeAll(s, resp, newClusterEntry)
		case EndpointType:
			var list []*endpointEntry
			list, err = decodeAll(s, resp, newEndpointEntry)
			endpoints = make(map[string]*endpointEntry, len(s.endpoints)+len(list))
			for k, v := range s.endpoints {
				endpoints[k] = v
			}
			for _, e := range list {
				endpoints[e.name] = e
			}
		case NameTableType:
			tables = nil
			for i, a := range resp.GetResources() {
				if a.GetTypeUrl() != typ {
					return fmt.Errorf("resource %d has type %s in a NameTable response", i, a.GetTypeUrl())
				}
				tables = append(tables, newNameTableEntry(a.GetValue()))
			}
		}
		if err != nil {
			return err
		}
		// NameTables contribute names as DNS listeners do.
		snap, err = compose(append(slices.Clip(listeners), tables...), clusters, subscribed(endpoints, edsServices(clusters)))
		return err
	}()
	if err != nil {
		// A rejected EDS answer still ends the wait for endpoints.
		return typ == EndpointType, s.nack(resp, err)
	}

	s.listeners, s.clusters, s.endpoints, s.nameTables = listeners, clusters, endpoints, tables
	s.candidate = snap
	s.versions[typ] = resp.GetVersionInfo()
	if typ == EndpointType {
		s.edsNonce = resp.GetNonce()
		s.edsPending = false
	}
	if err := s.ack(resp); err != nil {
		return false, err
	}
	if typ == ClusterType {
		if err := s.resubscribeEDS(); err != nil {
			return false, err
		}
	}
	return true, nil
}

// consistent reports whether every type received carries one version.
func (s *session) consistent() bool {
	v, ok := s.versions[ListenerType]
	if !ok || s.versions[ClusterType] != v {
		return false
	}
	if len(edsServices(s.clusters)) > 0 {
		if ev, ok := s.versions[EndpointType]; ok && ev != v {
			return false
		}
	}
	return true
}

// resourceHash identifies a resource by its bytes.
type resourceHash [sha256.Size]byte

// decodeAll turns a response's resources into entries, reusing the entry of
// any resource whose bytes were in the previous response of the type. Only the resources that changed are decoded and
// validated; the result equals decoding them all.
func decodeAll[T proto.Message, E any](s *session, resp *discoveryv3.DiscoveryResponse, build func(T) E) ([]E, error) {
	typ := resp.GetTypeUrl()
	prev := s.memo[typ]
	next := make(map[resourceHash]any, len(resp.GetResources()))
	out := make([]E, 0, len(resp.GetResources()))
	for i, a := range resp.GetResources() {
		if a.GetTypeUrl() != typ {
			return nil, fmt.Errorf("resource %d has type %s in a %s response", i, a.GetTypeUrl(), shortType(typ))
		}
		h := resourceHash(sha256.Sum256(a.GetValue()))
		if e, ok := next[h]; ok {
			out = append(out, e.(E))
			continue
		}
		if e, ok := prev[h]; ok {
			next[h] = e
			out = append(out, e.(E))
			continue
		}
		var m T
		m = m.ProtoReflect().Type().New().Interface().(T)
		if err := a.UnmarshalTo(m); err != nil {
			return nil, fmt.Errorf("decode %s resource %d: %w", shortType(typ), i, err)
		}
		e := build(m)
		next[h] = e
		out = append(out, e)
	}
	s.memo[typ] = next
	return out, nil
}

// edsServices lists the EDS service names the clusters need, sorted.
func edsServices(clusters []*clusterEntry) []string {
	var names []string
	for _, c := range clusters {
		if c.isEDS {
			names = append(names, c.eds)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// subscribed keeps the assignments of names, dropping those of clusters
// that are gone.
func subscribed(all map[string]*endpointEntry, names []string) []*endpointEntry {
	var out []*endpointEntry
	for _, n := range names {
		if e, ok := all[n]; ok {
			out = append(out, e)
		}
	}
	return out
}

// resubscribeEDS follows the clusters: EDS is not a wildcard type, so the
// client names what it wants.
func (s *session) resubscribeEDS() error {
	want := edsServices(s.clusters)
	if slices.Equal(want, s.edsNames) {
		return nil
	}
	for n := range s.endpoints {
		if !slices.Contains(want, n) {
			delete(s.endpoints, n)
		}
	}
	if len(want) == 0 {
		// An empty list would read as a wildcard to many servers; the old
		// subscription is harmless, its answers are simply not used.
		s.edsPending = false
		return nil
	}
	s.edsNames = want
	s.edsPending = true
	return s.send(&discoveryv3.DiscoveryRequest{
		TypeUrl:       EndpointType,
		VersionInfo:   s.versions[EndpointType],
		ResponseNonce: s.edsNonce,
		ResourceNames: want,
	})
}

func (s *session) ack(resp *discoveryv3.DiscoveryResponse) error {
	req := &discoveryv3.DiscoveryRequest{
		TypeUrl:       resp.GetTypeUrl(),
		VersionInfo:   resp.GetVersionInfo(),
		ResponseNonce: resp.GetNonce(),
	}
	if resp.GetTypeUrl() == EndpointType {
		req.ResourceNames = s.edsNames
	}
	if err := s.send(req); err != nil {
		return err
	}
	s.c.mu.Lock()
	s.c.status.Acked[resp.GetTypeUrl()] = resp.GetVersionInfo()
	if s.c.status.LastNACKType == resp.GetTypeUrl() {
		s.c.status.LastNACK, s.c.status.LastNACKType = "", ""
	}
	s.c.mu.Unlock()
	s.c.log.Debug("ACK", "type", shortType(resp.GetTypeUrl()), "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
	return nil
}

// nack rejects a response: the version stays the last accepted one, the
// error detail says what is wrong, and nothing of the response is used.
func (s *session) nack(resp *discoveryv3.DiscoveryResponse, cause error) error {
	msg := cause.Error()
	req := &discoveryv3.DiscoveryRequest{
		TypeUrl:       resp.GetTypeUrl(),
		VersionInfo:   s.versions[resp.GetTypeUrl()],
		ResponseNonce: resp.GetNonce(),
		ErrorDetail:   &status.Status{Code: int32(codes.InvalidArgument), Message: msg},
	}
	if resp.GetTypeUrl() == EndpointType {
		req.ResourceNames = s.edsNames
		s.edsNonce = resp.GetNonce()
		// The server answered; a rejected answer still ends the wait,
		// or one bad assignment would hold back every other change.
		s.edsPending = false
	}
	s.c.log.Warn("rejected configuration (NACK); last good snapshot stays", "type", shortType(resp.GetTypeUrl()), "rejected_version", resp.GetVersionInfo(), "kept_version", s.versions[resp.GetTypeUrl()], "error", msg)
	s.c.mu.Lock()
	s.c.status.LastNACK = msg
	s.c.status.LastNACKType = resp.GetTypeUrl()
	s.c.status.LastNACKAt = time.Now()
	s.c.mu.Unlock()
	return s.send(req)
}

// publish hands the stream's state to the client once it is whole: both
// listeners and clusters received, and endpoints for a changed EDS
// subscription answered.
func (s *session) publish() {
	_, haveL := s.versions[ListenerType]
	_, haveC := s.versions[ClusterType]
	if !haveL || !haveC || s.edsPending {
		return
	}
	// With NDS the names come in the NameTable: a snapshot before it would
	// answer none of them.
	if _, haveN := s.versions[NameTableType]; s.c.cfg.NameTable && !haveN {
		return
	}
	eds := edsServices(s.clusters)
	if s.candidate == nil {
		return
	}
	// A copy: the published snapshot is immutable, and the candidate may
	// be published again under another version.
	snap := *s.candidate
	v := s.versions[ListenerType] + "/" + s.versions[ClusterType]
	if len(eds) > 0 {
		v += "/" + s.versions[EndpointType]
	}
	if s.c.cfg.NameTable {
		v += "/nds:" + s.versions[NameTableType]
	}
	snap.Version = v
	snap.ReceivedAt = time.Now()
	s.c.accept(&snap)
}

func shortType(url string) string {
	switch url {
	case ListenerType:
		return "LDS"
	case ClusterType:
		return "CDS"
	case EndpointType:
		return "EDS"
	case NameTableType:
		return "NDS"
	}
	return url
}

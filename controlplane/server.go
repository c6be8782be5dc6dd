package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/shunt-dev/shunt/controlplane/meshca"
	"github.com/shunt-dev/shunt/internal/memlisten"
	"github.com/shunt-dev/shunt/mesh"
)

// DefaultListenAddress is where `shunt controlplane` serves ADS unless told
// otherwise: loopback, so that nothing outside the node reaches it by
// accident, on a port next to Kuma's 5678 that no common mesh component uses.
const DefaultListenAddress = "127.0.0.1:15680"

// DefaultPollInterval is how often the resource directory is checked; a
// change reaches connected nodes within about this long plus translation.
const DefaultPollInterval = 250 * time.Millisecond

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	// ResourcesDir holds the resource files (*.yaml, *.yml, recursively).
	ResourcesDir string
	// StateDir keeps the VIP assignment across restarts; empty keeps it in
	// memory only.
	StateDir string
	// VIPv4CIDR defaults to mesh.DefaultVIPv4CIDR.
	VIPv4CIDR string
	// VIPv6CIDR defaults to mesh.DefaultVIPv6CIDR; set DisableIPv6 to give
	// names no IPv6 VIP.
	VIPv6CIDR   string
	DisableIPv6 bool
	// PollInterval defaults to DefaultPollInterval.
	PollInterval time.Duration
	// Translate defaults to DefaultTranslateOptions().
	Translate *TranslateOptions
	// Credentials secure the gRPC server (nil: plaintext, for loopback
	// and in-process listeners).
	Credentials credentials.TransportCredentials
	// RequireNodeIdentity makes every stream's verified client
	// certificate name (common name, DNS or URI SAN) the node id it asks
	// for; set it with client certificates required in Credentials.
	RequireNodeIdentity bool
	// MaxStreams and MaxStreamsPerPeer bound the open streams, in total
	// and per remote host (defaults DefaultMaxStreams and
	// DefaultMaxStreamsPerPeer).
	MaxStreams, MaxStreamsPerPeer int
	// KeepaliveMinTime is the shortest client ping interval tolerated
	// (default DefaultKeepaliveMinTime); tests shorten it.
	KeepaliveMinTime time.Duration
	Logger           *slog.Logger
}

// Server serves the resources of a directory over ADS, one snapshot per
// node: the node's mesh and zone decide what it sees.
type Server struct {
	opts  Options
	tr    TranslateOptions
	log   *slog.Logger
	alloc mesh.VIPAllocator
	cache cache.SnapshotCache
	xds   serverv3.Server

	// reloadMu serialises reloads; mu guards the fields below and is never
	// held while reading files.
	reloadMu sync.Mutex
	files    fileCache
	mu       sync.Mutex
	gen      *generation
	// contentFP is the hash of the last files read, good or bad, so that a
	// broken file is reported once rather than on every poll.
	contentFP string
	nodes     map[string]*nodeState
	streams   map[streamKey]string
	// tcache holds the resources of recent translations; guarded by mu.
	tcache translateCache
	// cas are the mesh CAs by mesh and backend (reloadMu); ids the
	// identities issued (mu). now is the clock certificates are made by.
	cas map[string]*meshca.Authority
	ids map[identityKey]meshca.Identity
	now func() time.Time

	limits   streamLimits
	limitLog rateLog
	nodeLog  rateLog
}

type generation struct {
	version   string
	res       *mesh.Resources
	vips      mesh.VIPs
	snapshots map[nodeKey]*cache.Snapshot
	// cas are the CAs of the meshes with mTLS, by mesh.
	cas map[string]*meshca.Authority
}

// New reads the state and the resources once. Invalid resources at start are
// an error: there is no last good snapshot to fall back on.
func New(opts Options) (*Server, error) {
	if opts.ResourcesDir == "" {
		return nil, errors.New("controlplane: no resources directory")
	}
	if opts.VIPv4CIDR == "" {
		opts.VIPv4CIDR = mesh.DefaultVIPv4CIDR
	}
	if opts.VIPv6CIDR == "" && !opts.DisableIPv6 {
		opts.VIPv6CIDR = mesh.DefaultVIPv6CIDR
	}
	if opts.DisableIPv6 {
		opts.VIPv6CIDR = ""
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	tr := DefaultTranslateOptions()
	if opts.Translate != nil {
		tr = *opts.Translate
	}
	alloc, err := mesh.NewVIPAllocator(opts.VIPv4CIDR, opts.VIPv6CIDR)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s := &Server{
		opts:    opts,
		tr:      tr,
		log:     opts.Logger,
		alloc:   alloc,
		nodes:   map[string]*nodeState{},
		streams: map[streamKey]string{},
		now:     time.Now,
	}
	prev, err := loadVIPs(opts.StateDir)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s.gen = &generation{vips: prev}
	// Node ids are the cache keys: snapshots are per node, built once per
	// (mesh, zone) and shared by every node that has the same pair.
	s.cache = cache.NewSnapshotCache(true, cache.IDHash{}, slogAdapter{s.log})
	s.xds = serverv3.NewServer(context.Background(), s.cache, &callbacks{s: s})
	if err := s.reload(true); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	return s, nil
}

// Register adds the ADS service (and, for clients that do not aggregate,
// LDS and CDS) to g, for embedding in an existing gRPC server. Watch must
// run for changes to be picked up.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
}

// Keepalive defaults: proxies keep one stream for hours. The server pings
// an idle connection every DefaultKeepaliveTime to find dead peers, and lets
// clients ping it as often as every DefaultKeepaliveMinTime (shunt's own
// client pings every 30 s; Envoy's default is off).
const (
	DefaultKeepaliveTime    = 30 * time.Second
	DefaultKeepaliveMinTime = 10 * time.Second
)

// grpcServer is the one gRPC server setup of the control plane, embedded in
// `shunt run` or standing alone in `shunt controlplane`: the same keepalive
// enforcement everywhere, so that a client's pings never earn it a
// too_many_pings GOAWAY.
func (s *Server) grpcServer() *grpc.Server {
	minTime := s.opts.KeepaliveMinTime
	if minTime <= 0 {
		minTime = DefaultKeepaliveMinTime
	}
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: DefaultKeepaliveTime, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minTime, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(1 << 16),
	}
	if s.opts.Credentials != nil {
		opts = append(opts, grpc.Creds(s.opts.Credentials))
	}
	g := grpc.NewServer(opts...)
	s.Register(g)
	return g
}

// Serve serves xDS on every listener and watches the resources until ctx
// ends. It returns nil after a cancellation; if one listener fails, the
// others stop too and the error is returned.
func (s *Server) Serve(ctx context.Context, lns ...net.Listener) error {
	if len(lns) == 0 {
		return errors.New("controlplane: Serve needs a listener")
	}
	g := s.grpcServer()
	for _, lis := range lns {
		s.log.Info("control plane serving", "address", lis.Addr().String(), "resources", s.opts.ResourcesDir, "version", s.Version())
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	serveErr := make(chan error, len(lns))
	for _, lis := range lns {
		go func() {
			err := g.Serve(lis)
			if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				err = fmt.Errorf("serve xDS on %s: %w", lis.Addr(), err)
			} else {
				err = nil
			}
			serveErr <- err
		}()
	}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		_ = s.Watch(ctx)
	}()

	var err error
	pending := len(lns)
	select {
	case err = <-serveErr:
		pending--
		cancel()
		g.Stop()
	case <-ctx.Done():
		stopped := make(chan struct{})
		go func() {
			g.GracefulStop()
			close(stopped)
		}()
		// Streams never end on their own; give in-flight responses a
		// moment, then cut them.
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			g.Stop()
			<-stopped
		}
	}
	// Once stopped, every Serve returns.
	for ; pending > 0; pending-- {
		if e := <-serveErr; err == nil {
			err = e
		}
	}
	<-watchDone
	return err
}

// ServeInProcess serves xDS, as Serve does, on a listener inside the
// process until ctx ends: no port and no socket file, so no other process
// can subscribe. dial is the only way in (it fits grpc.WithContextDialer and
// xdsclient.Config.Dialer); done receives Serve's result. Serve runs on the
// extra listeners too, if any.
func (s *Server) ServeInProcess(ctx context.Context, extra ...net.Listener) (dial func(context.Context, string) (net.Conn, error), done <-chan error) {
	ln := memlisten.New()
	ch := make(chan error, 1)
	go func() { ch <- s.Serve(ctx, append([]net.Listener{ln}, extra...)...) }()
	return ln.Dial, ch
}

// Watch follows the resource directory until ctx ends (file events, and a
// poll every PollInterval); a change is translated and pushed to every
// connected node.
func (s *Server) Watch(ctx context.Context) error {
	t := time.NewTicker(s.opts.PollInterval)
	defer t.Stop()
	var events <-chan struct{}
	if n, err := newDirNotifier(s.opts.ResourcesDir); err != nil {
		s.log.Debug("no file events; changes are found by polling", "error", err)
	} else {
		defer n.Close()
		events = n.C
	}
	// A missing directory fails every tick; say so once, not four times a
	// second. (A broken file fails once: its contents are remembered.)
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.rotateDue()
		case <-events:
			// Let the burst end; what arrives meanwhile is covered by
			// the scan that follows.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(notifyDelay):
			}
			select {
			case <-events:
			default:
			}
		}
		err := s.reload(false)
		switch {
		case err != nil && err.Error() != lastErr:
			s.log.Error("resources not applied; last good version stays", "version", s.Version(), "error", err)
			lastErr = err.Error()
		case err == nil:
			lastErr = ""
		}
	}
}

// Reload re-reads the resources now, as a tick of Watch would. It returns
// the error that kept the last good version in force, if any.
func (s *Server) Reload() error { return s.reload(true) }

// Version is the version of the last good resources: a hash of their
// contents and VIPs, so that a restarted control plane with the same inputs
// does not make proxies reload.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen.version
}

// VIPs returns the current assignment of names to VIPs.
func (s *Server) VIPs() mesh.VIPs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen.vips
}

func (s *Server) reload(force bool) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	paths, stats, changed, err := s.files.scan(s.opts.ResourcesDir)
	if err != nil {
		return err
	}
	if !changed && !force {
		return nil
	}
	// A forced reload reads every file again: it is the way to pick up a
	// change that left a file's size and times as they were.
	files, contentFP, err := s.files.load(s.opts.ResourcesDir, paths, stats, force)
	if err != nil {
		return err
	}
	s.mu.Lock()
	same := contentFP == s.contentFP
	prevVIPs := s.gen.vips
	s.mu.Unlock()
	if same && !force {
		return nil
	}
	start := time.Now()
	err = s.apply(files, contentFP, prevVIPs)
	s.mu.Lock()
	s.contentFP = contentFP
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.log.Info("resources applied", "version", s.Version(), "files", len(files), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (s *Server) apply(files []*mesh.ParsedFile, contentFP string, prevVIPs mesh.VIPs) error {
	res, warns, err := mesh.LoadParsed(files)
	if err != nil {
		return fmt.Errorf("invalid resources: %w", err)
	}
	for _, w := range warns {
		s.log.Warn("resource warning", "where", w.Origin.String(), "field", w.Field, "warning", w.Message)
	}
	cas, err := s.authorities(res)
	if err != nil {
		return err
	}
	vips, err := s.alloc.Allocate(mesh.Hostnames(res), prevVIPs)
	if err != nil {
		return fmt.Errorf("allocate VIPs: %w", err)
	}
	vj, err := json.Marshal(vips)
	if err != nil {
		return fmt.Errorf("encode VIPs: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%+v\x00", contentFP, vj, s.tr)
	gen := &generation{version: hex.EncodeToString(h.Sum(nil))[:16], res: res, vips: vips, snapshots: map[nodeKey]*cache.Snapshot{}, cas: cas}

	s.mu.Lock()
	s.tcache.rotate()
	// Translate for the default node and every connected one before
	// switching, so that an error keeps the old generation whole.
	keys := []nodeKey{{mesh: mesh.DefaultMesh}}
	for _, n := range s.nodes {
		keys = append(keys, n.key)
	}
	for _, k := range keys {
		if _, err := s.snapshotLocked(gen, k); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	// Persist before publishing, so that a VIP a proxy has seen survives a
	// restart.
	if err := saveVIPs(s.opts.StateDir, vips); err != nil {
		s.mu.Unlock()
		return err
	}
	s.gen = gen
	push := make(map[string]*cache.Snapshot, len(s.nodes))
	for id, n := range s.nodes {
		push[id], _ = s.snapshotLocked(gen, n.key)
	}
	s.mu.Unlock()
	// Outside the lock: the cache answers open watches synchronously, and
	// stream callbacks take the lock too.
	for id, snap := range push {
		if err := s.cache.SetSnapshot(context.Background(), id, snap); err != nil {
			s.log.Error("push snapshot", "node", id, "error", err)
		}
	}
	return nil
}

// snapshotLocked builds, once per generation, the snapshot of a mesh and
// zone (and, in a mesh with mTLS, service: the identity differs), or of a
// ZoneEgress. Callers hold s.mu.
func (s *Server) snapshotLocked(gen *generation, k nodeKey) (*cache.Snapshot, error) {
	if k.egress == "" && gen.res.Mesh(k.mesh).MTLS == nil {
		k.service = ""
	}
	if snap, ok := gen.snapshots[k]; ok {
		return snap, nil
	}
	var out Resources
	var secrets []types.Resource
	var ids []meshca.Identity
	if k.egress != "" {
		var err error
		out, secrets, ids, err = s.egressLocked(gen, k.egress)
		if err != nil {
			return nil, err
		}
	} else {
		view := gen.res.View(k.mesh, k.zone)
		for _, w := range view.Warnings {
			s.log.Warn("resource conflict", "mesh", k.mesh, "zone", k.zone, "where", w.Origin.String(), "warning", w.Message)
		}
		var err error
		out, err = translateCached(view, gen.vips, s.tr, &s.tcache)
		if err != nil {
			return nil, fmt.Errorf("translate for mesh %q zone %q: %w", k.mesh, k.zone, err)
		}
		// The pre-built snapshot of a mesh (no node yet) has no service
		// and needs no identity.
		if view.Mesh.MTLS != nil && k.service != "" {
			id, err := s.identityLocked(gen, view.Mesh, k.service)
			if err != nil {
				return nil, fmt.Errorf("identity of %s in mesh %q: %w", k.service, k.mesh, err)
			}
			secrets, ids = MeshSecrets(gen.cas[k.mesh], id), []meshca.Identity{id}
		}
	}
	snap, err := cache.NewSnapshot(secretsVersion(gen.version, ids), map[resource.Type][]types.Resource{
		resource.ListenerType: out.Listeners,
		resource.ClusterType:  out.Clusters,
		resource.SecretType:   secrets,
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot for mesh %q zone %q: %w", k.mesh, k.zone, err)
	}
	gen.snapshots[k] = snap
	return snap, nil
}

// egressLocked is the configuration of the ZoneEgress named name: every
// mesh that routes through zone egress, seen from the egress's zone.
func (s *Server) egressLocked(gen *generation, name string) (Resources, []types.Resource, []meshca.Identity, error) {
	var eg *mesh.ZoneEgress
	for i := range gen.res.ZoneEgresses {
		if gen.res.ZoneEgresses[i].Name == name {
			eg = &gen.res.ZoneEgresses[i]
		}
	}
	if eg == nil {
		// Not an error of the resources: one stray node must not keep
		// every other node on the old generation.
		s.log.Warn("node says it is a ZoneEgress but no ZoneEgress resource has its name; it gets no configuration", "node", name, "metadata", NodeMetadataProxyType+": "+ProxyTypeEgress)
		return Resources{}, nil, nil, nil
	}
	var views []mesh.View
	var secrets []types.Resource
	var ids []meshca.Identity
	for _, m := range gen.res.MeshNames() {
		cfg := gen.res.Mesh(m)
		if !cfg.ZoneEgress || cfg.MTLS == nil {
			continue
		}
		views = append(views, gen.res.View(m, eg.Zone))
		id, err := s.identityLocked(gen, cfg, EgressIdentityService)
		if err != nil {
			return Resources{}, nil, nil, fmt.Errorf("identity of ZoneEgress %s in mesh %q: %w", eg.Name, m, err)
		}
		secrets = append(secrets, MeshSecrets(gen.cas[m], id)...)
		ids = append(ids, id)
	}
	out, err := TranslateEgress(*eg, views, s.tr)
	if err != nil {
		return Resources{}, nil, nil, fmt.Errorf("translate for ZoneEgress %s: %w", eg.Name, err)
	}
	return out, secrets, ids, nil
}

// NodeStatus is what the control plane knows of a connected node.
type NodeStatus struct {
	ID      string
	Mesh    string
	Zone    string
	Streams int
	// Acked maps a type URL to the last version the node accepted.
	Acked map[string]string
	// Nacked maps a type URL to the error of the last version the node
	// rejected, cleared when it accepts one.
	Nacked map[string]string
}

// Nodes lists the connected nodes, sorted by id.
func (s *Server) Nodes() []NodeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NodeStatus, 0, len(s.nodes))
	for id, n := range s.nodes {
		st := NodeStatus{ID: id, Mesh: n.key.mesh, Zone: n.key.zone, Streams: n.streams, Acked: map[string]string{}, Nacked: map[string]string{}}
		for k, v := range n.acked {
			st.Acked[k] = v
		}
		for k, v := range n.nacked {
			st.Nacked[k] = v
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}

// slogAdapter routes go-control-plane's logs into slog. The library's Info
// messages are per-request chatter, so they become Debug.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debugf(f string, args ...any) { a.l.Debug(fmt.Sprintf(f, args...)) }
func (a slogAdapter) Infof(f string, args ...any)  { a.l.Debug(fmt.Sprintf(f, args...)) }
func (a slogAdapter) Warnf(f string, args ...any)  { a.l.Warn(fmt.Sprintf(f, args...)) }
func (a slogAdapter) Errorf(f string, args ...any) { a.l.Error(fmt.Sprintf(f, args...)) }

// Package xdsclient is the agent's ADS client: it subscribes to a management
// server's listeners, clusters and endpoints and distils them into one
// immutable mesh.AgentSnapshot.
package xdsclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/shunt-dev/shunt/mesh"
)

// Config configures a Client.
type Config struct {
	// Server is host:port of the ADS server.
	Server string
	// NodeID, Cluster and Zone identify the node; Zone is sent as its
	// locality.
	NodeID, Cluster, Zone string
	// Mesh is sent as node metadata kuma.io/mesh (default "default") when
	// Metadata is nil.
	Mesh string
	// Metadata is the node metadata, as nodemeta.Build makes it; nil sends
	// kuma.io/mesh alone.
	Metadata *structpb.Struct
	// NameTable subscribes to Istio's NDS too: its NameTables add names,
	// as a DNS listener's table does (istiod sends them to a node whose
	// metadata has DNS_CAPTURE).
	NameTable bool
	// TLS nil means plaintext.
	TLS *tls.Config
	// TokenFile holds a token, re-read on each connect ("" = none), sent as
	// the authorization header: "Bearer TOKEN", or the token alone with
	// TokenRaw (Kuma's dataplane tokens).
	TokenFile string
	TokenRaw  bool
	// StateDir keeps the last good snapshot ("" = no persistence).
	StateDir string
	Logger   *slog.Logger
	// Backoff zero = defaults (see BackoffConfig).
	Backoff BackoffConfig
	// KeepaliveTime is the client's ping interval (default
	// DefaultKeepaliveTime).
	KeepaliveTime time.Duration
	// Dialer, when set, opens the connection to Server instead of the
	// network (an in-process control plane, a server in another network
	// namespace, a Unix socket); Server is then only passed to it.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Stream, when set, opens the client's streams instead of dialing
	// Server: the xDS proxy hands the client its in-process stream.
	Stream func(ctx context.Context) (ADSStream, error)
}

// Status is what the client knows of its connection.
type Status struct {
	// Connected is true while a stream is open and the server has answered
	// on it.
	Connected bool
	// Acked maps a type URL to the last version ACKed.
	Acked map[string]string
	// LastNACK is the error detail of the last NACK sent, cleared when a
	// later response of the same type is ACKed.
	LastNACK string
	// LastNACKType is the type URL LastNACK rejected.
	LastNACKType string
	// LastNACKAt is when it was sent.
	LastNACKAt time.Time
	// Reconnects counts streams opened after the first.
	Reconnects int
	// LastError is why the last stream ended, if it failed.
	LastError string
	// SnapshotVersion is the version of Current(), "" if none. It stays
	// put when a new version brings the same content.
	SnapshotVersion string
}

// Client is an ADS client. Create it with New and start it with Run.
type Client struct {
	cfg     Config
	log     *slog.Logger
	updates chan *mesh.AgentSnapshot

	// persistQ hands snapshots to the writer Run starts; it holds one and
	// the newest replaces an unwritten one. Only Run's goroutines use it.
	persistQ chan *mesh.AgentSnapshot

	mu      sync.Mutex
	current *mesh.AgentSnapshot
	status  Status
	running bool
}

// New validates cfg and loads the persisted snapshot, if any.
func New(cfg Config) (*Client, error) {
	if err := checkServer(cfg); err != nil {
		return nil, err
	}
	if cfg.NodeID == "" {
		return nil, errors.New("xdsclient: NodeID is empty")
	}
	if cfg.Mesh == "" {
		cfg.Mesh = mesh.DefaultMesh
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b, err := cfg.Backoff.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("xdsclient: %w", err)
	}
	cfg.Backoff = b
	c := &Client{
		cfg:     cfg,
		log:     cfg.Logger,
		updates: make(chan *mesh.AgentSnapshot, 1),
		status:  Status{Acked: map[string]string{}},
	}
	if cfg.StateDir != "" {
		snap, err := LoadPersisted(cfg.StateDir)
		if err != nil {
			return nil, fmt.Errorf("xdsclient: StateDir %q: %w", cfg.StateDir, err)
		}
		if snap != nil {
			c.current = snap
			c.status.SnapshotVersion = snap.Version
			c.log.Info("loaded persisted snapshot", "version", snap.Version, "names", len(snap.Names), "received_at", snap.ReceivedAt)
		}
	}
	return c, nil
}

func checkServer(cfg Config) error {
	if cfg.Server == "" {
		return errors.New("xdsclient: Server is empty")
	}
	if cfg.Dialer != nil || cfg.Stream != nil {
		return nil
	}
	host, port, err := net.SplitHostPort(cfg.Server)
	if err != nil || host == "" {
		return fmt.Errorf("xdsclient: Server %q is not host:port", cfg.Server)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("xdsclient: Server %q: invalid port %q", cfg.Server, port)
	}
	return nil
}

// Current returns the last good snapshot: the persisted one until the first
// update; nil if none.
func (c *Client) Current() *mesh.AgentSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Updates delivers each new good snapshot. The channel holds one and the
// newest replaces an unread one, so a slow reader never blocks the client.
func (c *Client) Updates() <-chan *mesh.AgentSnapshot { return c.updates }

// Status returns a copy of the connection status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Acked = make(map[string]string, len(c.status.Acked))
	for k, v := range c.status.Acked {
		s.Acked[k] = v
	}
	return s
}

// Run connects, subscribes and reconnects with backoff until ctx ends; it
// returns nil then. The current snapshot stays in force while disconnected.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return errors.New("xdsclient: Run is already running")
	}
	c.running = true
	c.mu.Unlock()
	if c.cfg.StateDir != "" {
		// Writing (and syncing) the file is off the publish path: DNS
		// gets a new snapshot without waiting for the disk. Each write is
		// still atomic, and the last one finishes before Run returns.
		c.persistQ = make(chan *mesh.AgentSnapshot, 1)
		written := make(chan struct{})
		go c.persistLoop(c.persistQ, written)
		defer func() {
			close(c.persistQ)
			<-written
		}()
	}
	defer func() {
		c.mu.Lock()
		c.running = false
		c.status.Connected = false
		c.mu.Unlock()
	}()

	failures := 0
	for first := true; ; first = false {
		if !first {
			c.mu.Lock()
			c.status.Reconnects++
			c.mu.Unlock()
		}
		answered, err := c.session(ctx)
		c.mu.Lock()
		c.status.Connected = false
		if err != nil && ctx.Err() == nil {
			c.status.LastError = err.Error()
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		// A stream that got answers was a working connection: start the
		// schedule over rather than punishing the next outage.
		if answered {
			failures = 0
		}
		wait := c.cfg.Backoff.delay(failures)
		failures++
		c.log.Warn("xDS stream ended; reconnecting", "server", c.cfg.Server, "error", err, "retry_in", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// accept makes snap the current snapshot, persists it and offers it on
// Updates, unless its content equals the current one's: a new version of
// the same names and addresses (a restarted server, a change elsewhere in
// the xDS) would only make DNS and the rules reload for nothing.
func (c *Client) accept(snap *mesh.AgentSnapshot) {
	c.mu.Lock()
	prev := c.current
	if prev != nil && sameContent(prev, snap) {
		c.mu.Unlock()
		return
	}
	c.current = snap
	c.status.SnapshotVersion = snap.Version
	c.mu.Unlock()

	c.log.Info("new snapshot", "version", snap.Version, "names", len(snap.Names), "passthrough", snap.Passthrough, "allowed_endpoints", len(snap.AllowedEndpoints), "dns_hosts", len(snap.DNSHosts))
	// Only this goroutine sends, so after the drain there is room.
	select {
	case <-c.updates:
	default:
	}
	c.updates <- snap
	if c.persistQ != nil {
		select {
		case <-c.persistQ:
		default:
		}
		c.persistQ <- snap
	}
}

// persistLoop writes the snapshots it is handed until q is closed; a
// snapshot superseded before its turn is skipped, the newest is always
// written.
func (c *Client) persistLoop(q <-chan *mesh.AgentSnapshot, done chan<- struct{}) {
	defer close(done)
	for snap := range q {
		if err := persist(c.cfg.StateDir, snap); err != nil {
			c.log.Error("persist snapshot", "dir", c.cfg.StateDir, "error", err)
		}
	}
}

func sameContent(a, b *mesh.AgentSnapshot) bool {
	x, y := *a, *b
	x.ReceivedAt, y.ReceivedAt = time.Time{}, time.Time{}
	x.Version, y.Version = "", ""
	return reflect.DeepEqual(normalise(x), normalise(y))
}

// normalise makes empty and nil lists compare equal (a persisted snapshot
// comes back from JSON with nil ones).
func normalise(s mesh.AgentSnapshot) mesh.AgentSnapshot {
	if len(s.AllowedEgress) == 0 {
		s.AllowedEgress = nil
	}
	if len(s.AllowedEndpoints) == 0 {
		s.AllowedEndpoints = nil
	}
	if len(s.DNSHosts) == 0 {
		s.DNSHosts = nil
	}
	if len(s.Names) == 0 {
		s.Names = nil
	}
	return s
}

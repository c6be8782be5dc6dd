package controlplane

import (
	"context"
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/shunt-dev/shunt/mesh"
	contract "github.com/shunt-dev/shunt/wire"
)

// Node metadata keys. A node says which mesh it belongs to and, when its
// Locality has no zone, which zone it runs in.
const (
	NodeMetadataMesh = contract.MetadataMesh
	NodeMetadataZone = "kuma.io/zone"
)

// nodeKey is what decides a node's snapshot: its mesh and zone, its
// service (its identity, in a mesh with mTLS), or, for a ZoneEgress, its
// name.
type nodeKey struct{ mesh, zone, service, egress string }

// NodeKey returns the mesh and zone a node is served for: the zone from its
// Locality, else from its metadata; the mesh from its metadata, else
// "default".
func NodeKey(n *core.Node) (meshName, zone string) {
	k := keyOf(n)
	return k.mesh, k.zone
}

func keyOf(n *core.Node) nodeKey {
	k := nodeKey{mesh: mesh.DefaultMesh, zone: n.GetLocality().GetZone()}
	md := n.GetMetadata().GetFields()
	if v := md[NodeMetadataMesh].GetStringValue(); v != "" {
		k.mesh = v
	}
	if k.zone == "" {
		k.zone = md[NodeMetadataZone].GetStringValue()
	}
	if md[NodeMetadataProxyType].GetStringValue() == ProxyTypeEgress {
		return nodeKey{egress: n.GetId(), zone: k.zone}
	}
	k.service = serviceOf(n, k.mesh)
	return k
}

type nodeState struct {
	key     nodeKey
	streams int
	acked   map[string]string
	nacked  map[string]string
}

// streamKey tells SotW and delta streams apart: their ids come from separate
// counters.
type streamKey struct {
	id    int64
	delta bool
}

type sent struct{ nonce, version string }

// callbacks keep the node registry: a node gets its snapshot on its first
// request, and loses it when its last stream closes.
type callbacks struct {
	s *Server
	// last response sent per stream and type, to name the version a NACK
	// rejects; guarded by s.mu.
	last map[streamKey]map[string]sent
	// names are what each stream's client certificate names, kept from
	// the stream's open for its first request; guarded by s.mu.
	names map[streamKey][]string
}

// openStream remembers who is at the other end of a new stream.
func (c *callbacks) openStream(ctx context.Context, k streamKey) error {
	if err := c.s.admit(ctx, k); err != nil {
		return err
	}
	if !c.s.opts.RequireNodeIdentity {
		return nil
	}
	names := peerNames(ctx)
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.names == nil {
		c.names = map[streamKey][]string{}
	}
	c.names[k] = names
	return nil
}

func (c *callbacks) opened(k streamKey, n *core.Node) error {
	s := c.s
	s.mu.Lock()
	if _, ok := s.streams[k]; ok {
		s.mu.Unlock()
		return nil
	}
	names := c.names[k]
	s.mu.Unlock()
	if n == nil || n.GetId() == "" {
		return fmt.Errorf("stream %d: the first request must carry a node id", k.id)
	}
	if err := s.checkIdentity(names, n.GetId()); err != nil {
		return err
	}
	s.mu.Lock()
	if _, ok := s.streams[k]; ok {
		s.mu.Unlock()
		return nil
	}
	id := n.GetId()
	s.streams[k] = id
	st, ok := s.nodes[id]
	var snap *cache.Snapshot
	var err error
	if !ok {
		st = &nodeState{key: keyOf(n), acked: map[string]string{}, nacked: map[string]string{}}
		s.nodes[id] = st
		snap, err = s.snapshotLocked(s.gen, st.key)
	}
	st.streams++
	version := s.gen.version
	s.mu.Unlock()
	if ok {
		return nil
	}
	if err != nil {
		// The node stays connected and gets a snapshot with the next
		// good generation.
		s.log.Error("no snapshot for node", "node", id, "mesh", st.key.mesh, "zone", st.key.zone, "error", err)
		return nil
	}
	s.nodeLog.info(s.log, "node connected", "node", id, "mesh", st.key.mesh, "zone", st.key.zone, "version", version)
	return s.cache.SetSnapshot(context.Background(), id, snap)
}

func (c *callbacks) closed(k streamKey) {
	s := c.s
	s.release(k)
	s.mu.Lock()
	id, ok := s.streams[k]
	delete(s.streams, k)
	delete(c.last, k)
	delete(c.names, k)
	if !ok {
		s.mu.Unlock()
		return
	}
	st := s.nodes[id]
	st.streams--
	gone := st.streams == 0
	if gone {
		delete(s.nodes, id)
	}
	s.mu.Unlock()
	if gone {
		s.cache.ClearSnapshot(id)
		s.nodeLog.info(s.log, "node disconnected", "node", id)
	}
}

// answered records an ACK or a NACK. A request with a response nonce answers
// the response with that nonce; one without is a first request.
func (c *callbacks) answered(k streamKey, typeURL, nonce, version string, errDetail string, hasErr bool) {
	if nonce == "" {
		return
	}
	s := c.s
	s.mu.Lock()
	id := s.streams[k]
	st := s.nodes[id]
	rejected := c.last[k][typeURL]
	if st == nil {
		s.mu.Unlock()
		return
	}
	var changed bool
	if hasErr {
		changed = st.nacked[typeURL] != errDetail
		st.nacked[typeURL] = errDetail
	} else {
		changed = st.acked[typeURL] != version
		st.acked[typeURL] = version
		delete(st.nacked, typeURL)
	}
	s.mu.Unlock()
	switch {
	case hasErr && changed:
		v := ""
		if rejected.nonce == nonce {
			v = rejected.version
		}
		s.log.Warn("node rejected configuration (NACK)", "node", id, "type", typeURL, "rejected_version", v, "kept_version", version, "error", errDetail)
	case !hasErr && changed:
		s.log.Info("node accepted configuration (ACK)", "node", id, "type", typeURL, "version", version)
	}
}

func (c *callbacks) sentResponse(k streamKey, typeURL, nonce, version string) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.last == nil {
		c.last = map[streamKey]map[string]sent{}
	}
	if c.last[k] == nil {
		c.last[k] = map[string]sent{}
	}
	c.last[k][typeURL] = sent{nonce: nonce, version: version}
}

func (c *callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.openStream(ctx, streamKey{id: id})
}

func (c *callbacks) OnStreamClosed(id int64, _ *core.Node) { c.closed(streamKey{id: id}) }

func (c *callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	k := streamKey{id: id}
	if err := c.opened(k, req.GetNode()); err != nil {
		return err
	}
	c.answered(k, req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	return nil
}

func (c *callbacks) OnStreamResponse(_ context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.sentResponse(streamKey{id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

func (c *callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.openStream(ctx, streamKey{id: id, delta: true})
}

func (c *callbacks) OnDeltaStreamClosed(id int64, _ *core.Node) {
	c.closed(streamKey{id: id, delta: true})
}

func (c *callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	k := streamKey{id: id, delta: true}
	c.s.mu.Lock()
	_, known := c.s.streams[k]
	c.s.mu.Unlock()
	if !known {
		if err := c.opened(k, req.GetNode()); err != nil {
			return err
		}
	}
	c.s.mu.Lock()
	v := c.last[k][req.GetTypeUrl()]
	c.s.mu.Unlock()
	version := ""
	if v.nonce == req.GetResponseNonce() {
		version = v.version
	}
	c.answered(k, req.GetTypeUrl(), req.GetResponseNonce(), version, req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	return nil
}

func (c *callbacks) OnStreamDeltaResponse(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	c.sentResponse(streamKey{id: id, delta: true}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

// OnFetchRequest serves REST fetches from the same per-node snapshots,
// without registering the node: a fetch has no stream to close.
func (c *callbacks) OnFetchRequest(ctx context.Context, req *discovery.DiscoveryRequest) error {
	s := c.s
	n := req.GetNode()
	if n.GetId() == "" {
		return fmt.Errorf("fetch without a node id")
	}
	if err := s.checkIdentity(peerNames(ctx), n.GetId()); err != nil {
		return err
	}
	s.mu.Lock()
	snap, err := s.snapshotLocked(s.gen, keyOf(n))
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.cache.SetSnapshot(context.Background(), n.GetId(), snap)
}

func (c *callbacks) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

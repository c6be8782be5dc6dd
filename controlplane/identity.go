package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/shunt-dev/shunt/controlplane/meshca"
	"github.com/shunt-dev/shunt/mesh"
)

// NodeMetadataService names the service a sidecar runs (its identity in an
// mTLS mesh). Without it the node's name stands for the service: the node
// id with any "<mesh>." prefix (Kuma's dataplane ids) removed.
const NodeMetadataService = "kuma.io/service"

// serviceOf is the identity a sidecar node gets.
func serviceOf(n *core.Node, meshName string) string {
	if s := n.GetMetadata().GetFields()[NodeMetadataService].GetStringValue(); s != "" {
		return s
	}
	return strings.TrimPrefix(n.GetId(), meshName+".")
}

type identityKey struct{ mesh, backend, service string }

// authorities loads or creates the CA of every mesh with mTLS. Called by
// apply only (under reloadMu), so that s.cas needs no other lock; a CA is
// created once and kept, also when the state is in memory only.
func (s *Server) authorities(res *mesh.Resources) (map[string]*meshca.Authority, error) {
	out := map[string]*meshca.Authority{}
	for _, name := range res.MeshNames() {
		m := res.Mesh(name)
		if m.MTLS == nil {
			continue
		}
		k := name + "\x00" + m.MTLS.Backend
		a := s.cas[k]
		if a == nil {
			var err error
			a, err = meshca.LoadOrCreate(s.opts.StateDir, name, m.MTLS.Backend, m.MTLS.CAKeyBits, m.MTLS.CALifetime, s.now())
			if err != nil {
				return nil, fmt.Errorf("mesh %s mtls backend %s: %w", name, m.MTLS.Backend, err)
			}
			if s.cas == nil {
				s.cas = map[string]*meshca.Authority{}
			}
			s.cas[k] = a
			s.log.Info("mesh CA ready", "mesh", name, "backend", m.MTLS.Backend, "state", s.opts.StateDir)
		}
		out[name] = a
	}
	return out, nil
}

// identityLocked returns the current identity of service in the mesh,
// issuing one when there is none or the last is due for renewal. Callers
// hold s.mu.
func (s *Server) identityLocked(gen *generation, m mesh.MeshConfig, service string) (meshca.Identity, error) {
	k := identityKey{mesh: m.Name, backend: m.MTLS.Backend, service: service}
	if id, ok := s.ids[k]; ok && s.now().Before(id.RenewAt()) {
		return id, nil
	}
	ca := gen.cas[m.Name]
	if ca == nil {
		return meshca.Identity{}, fmt.Errorf("mesh %s has no CA", m.Name)
	}
	id, err := ca.Issue(service, m.MTLS.CertLifetime, s.now())
	if err != nil {
		return meshca.Identity{}, err
	}
	if s.ids == nil {
		s.ids = map[identityKey]meshca.Identity{}
	}
	s.ids[k] = id
	s.log.Info("identity issued", "identity", id.URI, "not_after", id.NotAfter.Format(time.RFC3339), "renew_at", id.RenewAt().Format(time.RFC3339))
	return id, nil
}

// MeshSecrets are a proxy's SDS secrets for one mesh: its identity, and the
// mesh CA it verifies peers against.
func MeshSecrets(ca *meshca.Authority, id meshca.Identity) []types.Resource {
	return []types.Resource{
		&tlsv3.Secret{Name: IdentitySecretName(ca.Mesh), Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: id.CertPEM}},
			PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: id.KeyPEM}},
		}}},
		&tlsv3.Secret{Name: MeshCASecretName(ca.Mesh), Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: ca.CertPEM}},
		}}},
	}
}

// secretsVersion folds the identities into a snapshot's version, so that a
// rotation is a new version for the proxy.
func secretsVersion(base string, ids []meshca.Identity) string {
	if len(ids) == 0 {
		return base
	}
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id.Serial))
	}
	return base + "-" + hex.EncodeToString(h.Sum(nil))[:8]
}

// rotateDue replaces identities due for renewal and pushes the nodes that
// hold them their new secrets. Watch calls it on every tick.
func (s *Server) rotateDue() {
	now := s.now()
	s.mu.Lock()
	s.pruneIdentitiesLocked()
	due := false
	for _, id := range s.ids {
		if !now.Before(id.RenewAt()) {
			due = true
			break
		}
	}
	if !due {
		s.mu.Unlock()
		return
	}
	// Rebuild every snapshot of the generation: those whose identities
	// are still good get the same ones back.
	s.gen.snapshots = map[nodeKey]*cache.Snapshot{}
	push := map[string]*cache.Snapshot{}
	var errs []error
	for id, n := range s.nodes {
		snap, err := s.snapshotLocked(s.gen, n.key)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", id, err))
			continue
		}
		push[id] = snap
	}
	s.mu.Unlock()
	for _, err := range errs {
		s.log.Error("rotate identities", "error", err)
	}
	for id, snap := range push {
		if err := s.cache.SetSnapshot(context.Background(), id, snap); err != nil {
			s.log.Error("push rotated identity", "node", id, "error", err)
		}
	}
}

// pruneIdentitiesLocked forgets the identities of services no connected
// node has (pods come and go under new names), once they outnumber the
// nodes enough to matter. A node that comes back gets a new one.
func (s *Server) pruneIdentitiesLocked() {
	if len(s.ids) <= 2*len(s.nodes)+16 {
		return
	}
	used := map[identityKey]bool{}
	for _, n := range s.nodes {
		if n.key.egress != "" {
			for k := range s.ids {
				if k.service == EgressIdentityService {
					used[k] = true
				}
			}
			continue
		}
		m := s.gen.res.Mesh(n.key.mesh)
		if m.MTLS != nil {
			used[identityKey{mesh: m.Name, backend: m.MTLS.Backend, service: n.key.service}] = true
		}
	}
	for k := range s.ids {
		if !used[k] {
			delete(s.ids, k)
		}
	}
}

package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnstable "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/shunt-dev/shunt/mesh"
)

// translateCache keeps the listener of each route and the cluster of each
// ExternalService, keyed by everything they are built from, so that a
// change to one service among thousands translates (and validates) that
// service alone; the others reuse their messages, which are never changed
// once built. Entries not used for a whole generation are dropped. The
// Server guards it with its mutex.
type translateCache struct {
	cur, old map[string]any
	// built counts resources translated rather than reused, for tests.
	built int
}

type cachedRoute struct {
	l      *listener.Listener
	domain *dnstable.DnsTable_DnsVirtualDomain
}

// rotate starts a generation: what the previous one did not use goes.
func (c *translateCache) rotate() {
	c.old, c.cur = c.cur, make(map[string]any, len(c.cur))
}

func (c *translateCache) get(key string) (any, bool) {
	if v, ok := c.cur[key]; ok {
		return v, true
	}
	if v, ok := c.old[key]; ok {
		c.cur[key] = v
		return v, true
	}
	return nil, false
}

func (c *translateCache) put(key string, v any) {
	if c.cur == nil {
		c.cur = map[string]any{}
	}
	c.cur[key] = v
	c.built++
}

// clusterKey is everything externalCluster reads: the service, and for a
// mesh that routes through zone egress, the egresses (egressKey).
func clusterKey(es *mesh.ExternalService, zoneEgress bool, egressKey string) string {
	var b strings.Builder
	b.WriteString("c\x00")
	for _, s := range []string{es.Mesh, es.Name, es.Service, string(es.Protocol), es.Zone, es.Address.Host, es.Address.IP.String(), strconv.Itoa(int(es.Address.Port))} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	if es.TLS != nil {
		b.WriteString("tls\x00")
		b.WriteString(strconv.FormatBool(es.TLS.AllowRenegotiation))
		b.WriteByte(0)
		b.WriteString(es.TLS.SNI)
		b.WriteByte(0)
		for _, d := range [][]byte{es.TLS.CACert, es.TLS.ClientCert, es.TLS.ClientKey} {
			sum := sha256.Sum256(d)
			b.WriteString(strconv.Itoa(len(d)))
			b.WriteByte(':')
			b.WriteString(hex.EncodeToString(sum[:]))
			b.WriteByte(0)
		}
	}
	if zoneEgress {
		b.WriteString("egress\x00")
		b.WriteString(egressKey)
	}
	return b.String()
}

func egressKey(egresses []mesh.ZoneEgress) string {
	var b strings.Builder
	for _, eg := range egresses {
		b.WriteString(eg.Name)
		b.WriteByte(0)
		b.WriteString(eg.Zone)
		b.WriteByte(0)
		b.WriteString(eg.Address)
		b.WriteByte(0)
		b.WriteString(strconv.Itoa(int(eg.Port)))
		b.WriteByte(0)
	}
	return b.String()
}

// routeKey is everything routeListener reads: the route, the clusters it
// leads to and the name's VIPs.
func routeKey(r *mesh.Route, vips mesh.VIPs) string {
	var b strings.Builder
	b.WriteString("l\x00")
	for _, s := range []string{r.Hostname, r.IP.String(), strconv.Itoa(int(r.Port)), r.Service, string(r.Protocol)} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	if r.Hostname != "" {
		if v, ok := vips.V4[r.Hostname]; ok {
			b.WriteString(v.String())
		}
		b.WriteByte(0)
		if v, ok := vips.V6[r.Hostname]; ok {
			b.WriteString(v.String())
		}
		b.WriteByte(0)
	}
	for _, es := range r.Targets {
		b.WriteString(es.Name)
		b.WriteByte(0)
	}
	return b.String()
}

// compact returns m in its wire form: into, which holds m's name (field 1)
// and nothing else, gets the rest of m's encoding as unknown fields. The
// xDS server marshals every resource of every response it sends; a cached
// resource marshals again as a copy of its bytes instead of a walk through
// its message tree, and holds far less memory. Its encoding is m's own:
// deterministic marshalling writes the name first and unknown fields as
// they are.
func compact[T proto.Message](m, into T) (T, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return into, fmt.Errorf("marshal: %w", err)
	}
	num, _, n := protowire.ConsumeField(b)
	if n < 0 {
		return into, fmt.Errorf("marshal: %w", protowire.ParseError(n))
	}
	if num != 1 {
		// No name (field 1 comes first when set): nothing to split off.
		n = 0
	}
	into.ProtoReflect().SetUnknown(b[n:])
	return into, nil
}

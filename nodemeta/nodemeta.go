// Package nodemeta builds the node metadata shunt sends to a control plane,
// typed as the control plane reads it (Kuma wants lists, structs and bools,
// not only strings). The xDS client sends it, and an Envoy bootstrap gives
// Envoy the very same struct, so that the control plane sees one node.
package nodemeta

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"

	"github.com/shunt-dev/shunt/wire"
)

// Flavor is the kind of control plane the node talks to; it decides what
// metadata is sent and which DNS sources are read.
type Flavor string

const (
	// Generic is shunt's own control plane or any go-control-plane server:
	// kuma.io/mesh plus what the user adds.
	Generic Flavor = "generic"
	// Kuma is kuma-cp: the metadata kuma-dp sends.
	Kuma Flavor = "kuma"
	// Istio is istiod: the DNS proxy switches pilot-agent sends.
	Istio Flavor = "istio"
)

// ParseFlavor reads a flavor name; "" and "auto" are "" (detect).
func ParseFlavor(s string) (Flavor, error) {
	switch f := Flavor(strings.ToLower(strings.TrimSpace(s))); f {
	case "", "auto":
		return "", nil
	case Generic, Kuma, Istio:
		return f, nil
	}
	return "", fmt.Errorf("xds flavor %q: want auto, generic, kuma or istio", s)
}

// Detect guesses the flavor from what the user gave: a Dataplane file means
// Kuma; a node id "<mesh>.<name>" of the node's mesh is Kuma's form; an id
// "sidecar~IP~POD.NS~DOMAIN" is Istio's. Anything else is Generic.
func Detect(nodeID, meshName string, haveDataplane bool) Flavor {
	switch {
	case haveDataplane:
		return Kuma
	case strings.Count(nodeID, "~") == 3 && (strings.HasPrefix(nodeID, "sidecar~") || strings.HasPrefix(nodeID, "router~")):
		return Istio
	case meshName != "" && strings.HasPrefix(nodeID, meshName+".") && len(nodeID) > len(meshName)+1:
		return Kuma
	}
	return Generic
}

// KumaOptions describe the kuma-dp shunt stands in for.
type KumaOptions struct {
	// DNSPort is where the node answers DNS. kuma-cp sends a DNS table only
	// to a node that gives one.
	DNSPort uint16
	// AdminPort and ReadinessPort are the local Envoy's admin port and the
	// readiness reporter's; kuma-cp wants both or neither. Zero: kuma-dp's
	// defaults (wire.KumaAdminPort, wire.KumaReadinessPort).
	AdminPort, ReadinessPort uint16
	// Features nil: [wire.KumaFeatureEmbeddedDNS], so that kuma-cp gives the
	// local Envoy no UDP DNS listener on DNSPort, where shunt listens. An
	// empty, non-nil list sends none.
	Features []string
	// KumaDPVersion and EnvoyVersion fill the version struct kuma-cp checks
	// (it logs an error for every node that has none). Empty: the versions
	// this flavour was verified against.
	KumaDPVersion, EnvoyVersion string
	// Dataplane, when set, is sent as dataplane.resource: kuma-cp then
	// registers the node itself, as for kuma-dp --dataplane-file.
	Dataplane *Dataplane
	// IPv6Enabled tells kuma-cp the node has IPv6, for its IPv6 VIPs and
	// passthrough cluster.
	IPv6Enabled bool
}

// Versions this flavour was verified against: kuma-cp 2.14.3, whose
// data plane runs Envoy 1.37.
const (
	DefaultKumaDPVersion = "2.14.3"
	DefaultEnvoyVersion  = "1.37.0"
)

// IstioOptions are the switches of Istio's DNS proxy.
type IstioOptions struct {
	// DNSCapture asks istiod for NameTables (DNS_CAPTURE).
	DNSCapture bool
	// AutoAllocate asks istiod to give ServiceEntries without addresses a
	// VIP (DNS_AUTO_ALLOCATE).
	AutoAllocate bool
}

// Options select what Build produces.
type Options struct {
	Flavor Flavor
	// Mesh is sent as kuma.io/mesh for the generic flavour.
	Mesh  string
	Kuma  KumaOptions
	Istio IstioOptions
	// Extra is the user's metadata; each of its keys replaces the
	// flavour's.
	Extra map[string]*structpb.Value
}

// Build returns the node metadata for o.
func Build(o Options) (*structpb.Struct, error) {
	fields := map[string]*structpb.Value{}
	switch o.Flavor {
	case "", Generic:
		if o.Mesh != "" {
			fields[wire.MetadataMesh] = structpb.NewStringValue(o.Mesh)
		}
	case Kuma:
		if err := kumaFields(fields, o.Kuma); err != nil {
			return nil, err
		}
	case Istio:
		fields[wire.IstioDNSCapture] = structpb.NewStringValue(strconv.FormatBool(o.Istio.DNSCapture))
		fields[wire.IstioDNSAutoAllocate] = structpb.NewStringValue(strconv.FormatBool(o.Istio.AutoAllocate))
	default:
		return nil, fmt.Errorf("node metadata: unknown flavor %q", o.Flavor)
	}
	for _, k := range slices.Sorted(maps.Keys(o.Extra)) {
		if k == "" {
			return nil, errors.New("node metadata: empty key")
		}
		if o.Extra[k] == nil {
			return nil, fmt.Errorf("node metadata %q: no value", k)
		}
		fields[k] = o.Extra[k]
	}
	return &structpb.Struct{Fields: fields}, nil
}

func kumaFields(fields map[string]*structpb.Value, k KumaOptions) error {
	if k.DNSPort == 0 {
		return errors.New("kuma node metadata: the DNS port is 0; kuma-cp sends no DNS table without one")
	}
	admin, ready := k.AdminPort, k.ReadinessPort
	if admin == 0 {
		admin = wire.KumaAdminPort
	}
	if ready == 0 {
		ready = wire.KumaReadinessPort
	}
	if admin == ready || admin == k.DNSPort || ready == k.DNSPort {
		return fmt.Errorf("kuma node metadata: ports must differ: dns %d, admin %d, readiness %d", k.DNSPort, admin, ready)
	}
	// kuma-cp parses ports from strings, as kuma-dp sends them.
	fields[wire.KumaMetaDNSPort] = structpb.NewStringValue(strconv.Itoa(int(k.DNSPort)))
	fields[wire.KumaMetaAdminPort] = structpb.NewStringValue(strconv.Itoa(int(admin)))
	fields[wire.KumaMetaReadinessPort] = structpb.NewStringValue(strconv.Itoa(int(ready)))

	features := k.Features
	if features == nil {
		features = []string{wire.KumaFeatureEmbeddedDNS}
	}
	list := make([]*structpb.Value, len(features))
	for i, f := range features {
		if strings.TrimSpace(f) == "" {
			return fmt.Errorf("kuma node metadata: feature %d is empty", i)
		}
		list[i] = structpb.NewStringValue(f)
	}
	fields[wire.KumaMetaFeatures] = structpb.NewListValue(&structpb.ListValue{Values: list})

	dpv, ev := k.KumaDPVersion, k.EnvoyVersion
	if dpv == "" {
		dpv = DefaultKumaDPVersion
	}
	if ev == "" {
		ev = DefaultEnvoyVersion
	}
	fields[wire.KumaMetaVersion] = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
		"kumaDp": structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			"version": structpb.NewStringValue(dpv),
		}}),
		"envoy": structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			"version": structpb.NewStringValue(ev),
		}}),
	}})
	fields[wire.KumaMetaIPv6Enabled] = structpb.NewBoolValue(k.IPv6Enabled)
	if k.Dataplane != nil {
		b, err := k.Dataplane.JSON()
		if err != nil {
			return fmt.Errorf("kuma node metadata: %w", err)
		}
		fields[wire.KumaMetaResource] = structpb.NewStringValue(string(b))
	}
	return nil
}

// ParseAssignment reads one --xds-node-metadata argument: KEY=VALUE sets a
// string, KEY:=JSON a typed value (list, struct, number, bool), as in
// `features:=["feature-embedded-dns"]`.
func ParseAssignment(s string) (string, *structpb.Value, error) {
	i := strings.IndexByte(s, '=')
	if i <= 0 {
		return "", nil, fmt.Errorf("node metadata %q: want KEY=VALUE or KEY:=JSON", s)
	}
	key, val := s[:i], s[i+1:]
	if !strings.HasSuffix(key, ":") {
		return key, structpb.NewStringValue(val), nil
	}
	key = strings.TrimSuffix(key, ":")
	if key == "" {
		return "", nil, fmt.Errorf("node metadata %q: empty key", s)
	}
	var v any
	if err := json.Unmarshal([]byte(val), &v); err != nil {
		return "", nil, fmt.Errorf("node metadata %q: value is not JSON: %w", key, err)
	}
	pv, err := structpb.NewValue(v)
	if err != nil {
		return "", nil, fmt.Errorf("node metadata %q: %w", key, err)
	}
	return key, pv, nil
}

// FromYAML reads a YAML (or JSON) mapping of metadata keys to values of any
// type, as a config file gives it.
func FromYAML(data []byte) (map[string]*structpb.Value, error) {
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	return FromMap(m)
}

// FromMap converts decoded YAML or JSON values.
func FromMap(m map[string]any) (map[string]*structpb.Value, error) {
	out := make(map[string]*structpb.Value, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v, err := structpb.NewValue(normaliseYAML(m[k]))
		if err != nil {
			return nil, fmt.Errorf("node metadata %q: %w", k, err)
		}
		out[k] = v
	}
	return out, nil
}

// normaliseYAML turns yaml.v3's map[string]any trees (and the rare
// map[any]any) into what structpb accepts.
func normaliseYAML(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = normaliseYAML(e)
		}
		return out
	case map[any]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[fmt.Sprint(k)] = normaliseYAML(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normaliseYAML(e)
		}
		return out
	}
	return v
}

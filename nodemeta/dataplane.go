package nodemeta

import (
	"encoding/json"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// Dataplane is a Kuma Dataplane resource as `kumactl apply` and
// `kuma-dp run --dataplane-file` take it (YAML or JSON, type Dataplane).
// Only type, mesh, name and networking.transparentProxying are read; the
// rest goes to kuma-cp unchanged, which validates it.
type Dataplane struct {
	Mesh, Name string
	doc        map[string]any
}

// ParseDataplane reads a Dataplane file. mesh defaults to "default" as
// kumactl's does.
func ParseDataplane(data []byte) (*Dataplane, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	if doc == nil {
		return nil, fmt.Errorf("dataplane: empty document")
	}
	doc = normaliseYAML(doc).(map[string]any)
	typ, _ := doc["type"].(string)
	if typ != "Dataplane" {
		return nil, fmt.Errorf("dataplane: type %q: want Dataplane", fmt.Sprint(doc["type"]))
	}
	name, _ := doc["name"].(string)
	if name == "" || strings.ContainsAny(name, " /") {
		return nil, fmt.Errorf("dataplane: name %q: want a resource name", fmt.Sprint(doc["name"]))
	}
	m, ok := doc["mesh"]
	if !ok {
		m = "default"
		doc["mesh"] = m
	}
	meshName, _ := m.(string)
	if meshName == "" || strings.ContainsAny(meshName, " ./") {
		return nil, fmt.Errorf("dataplane: mesh %q: want a mesh name", fmt.Sprint(m))
	}
	if _, ok := doc["networking"].(map[string]any); !ok {
		return nil, fmt.Errorf("dataplane %s: networking: missing or not a mapping", name)
	}
	return &Dataplane{Mesh: meshName, Name: name, doc: doc}, nil
}

// NodeID is the node id kuma-cp expects for this Dataplane.
func (d *Dataplane) NodeID() string { return d.Mesh + "." + d.Name }

// SetTransparentProxy fills networking.transparentProxying with the ports
// shunt's capture sends traffic to, as kuma-dp does from its transparent
// proxy config. A value the file already gives must agree: a Dataplane that
// names other ports than the capture uses would get an Envoy listening
// where no traffic arrives.
func (d *Dataplane) SetTransparentProxy(inbound, outbound uint16, ipv6 bool) error {
	net := d.doc["networking"].(map[string]any)
	tp, _ := net["transparentProxying"].(map[string]any)
	if tp == nil {
		if v, ok := net["transparentProxying"]; ok && v != nil {
			return fmt.Errorf("dataplane %s: networking.transparentProxying: not a mapping", d.Name)
		}
		tp = map[string]any{}
		net["transparentProxying"] = tp
	}
	mode := "IPv4"
	if ipv6 {
		mode = "DualStack"
	}
	for _, kv := range []struct {
		key  string
		want any
	}{
		{"redirectPortInbound", int(inbound)},
		{"redirectPortOutbound", int(outbound)},
		{"ipFamilyMode", mode},
	} {
		have, ok := tp[kv.key]
		if !ok || have == nil {
			tp[kv.key] = kv.want
			continue
		}
		if fmt.Sprint(have) != fmt.Sprint(kv.want) {
			return fmt.Errorf("dataplane %s: networking.transparentProxying.%s is %v but the capture uses %v", d.Name, kv.key, have, kv.want)
		}
	}
	return nil
}

// JSON is the resource as kuma-cp reads dataplane.resource.
func (d *Dataplane) JSON() ([]byte, error) {
	b, err := json.Marshal(d.doc)
	if err != nil {
		return nil, fmt.Errorf("dataplane %s: encode: %w", d.Name, err)
	}
	return b, nil
}

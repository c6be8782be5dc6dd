package dnsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// ParseTableFile reads a table file: a YAML (or JSON, which is YAML) map of
// names to lists of addresses,
//
//	httpbin.mesh: [240.0.0.1, "fd00::1"]
//	"*.example.com": [240.0.0.2]
//
// A single address may be written without the list. Errors name the entry
// and the value.
func ParseTableFile(b []byte) (map[string][]netip.Addr, error) {
	var raw map[string]yaml.Node
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("parse table file: %w", err)
	}
	names := make([]string, 0, len(raw))
	for n := range raw {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make(map[string][]netip.Addr, len(raw))
	var errs []error
	for _, name := range names {
		node := raw[name]
		var vals []string
		switch node.Kind {
		case yaml.ScalarNode:
			vals = []string{node.Value}
		case yaml.SequenceNode:
			for _, c := range node.Content {
				if c.Kind != yaml.ScalarNode {
					errs = append(errs, fmt.Errorf("name %q (line %d): addresses must be strings", name, c.Line))
					continue
				}
				vals = append(vals, c.Value)
			}
		default:
			errs = append(errs, fmt.Errorf("name %q (line %d): want a list of addresses", name, node.Line))
			continue
		}
		for _, v := range vals {
			a, err := netip.ParseAddr(strings.TrimSpace(v))
			if err != nil {
				errs = append(errs, fmt.Errorf("name %q (line %d): address %q is not an IP address", name, node.Line, v))
				continue
			}
			out[name] = append(out[name], a)
		}
		if _, ok := out[name]; !ok && len(vals) == 0 {
			out[name] = nil // NewTable reports "no addresses"
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("table file: %w", errors.Join(errs...))
	}
	return out, nil
}

package mesh

import (
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// walker reads a decoded YAML document by hand rather than through struct
// tags: every unknown key becomes an error that names its full path, and
// every error carries the line it was found on.
type walker struct {
	origin Origin
	errs   []error
	warns  []Warning
}

func (w *walker) fail(n *yaml.Node, field, value, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	w.errs = append(w.errs, &FieldError{
		Origin: w.origin,
		Line:   line,
		Field:  field,
		Value:  value,
		Reason: fmt.Sprintf(format, args...),
	})
}

func (w *walker) warn(field, format string, args ...any) {
	w.warns = append(w.warns, Warning{Origin: w.origin, Field: field, Message: fmt.Sprintf(format, args...)})
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// fields is a YAML mapping's keys, checked against what the resource allows.
type fields struct {
	w    *walker
	path string
	node *yaml.Node
	m    map[string]*yaml.Node
}

// mapping checks that n is a mapping whose keys are all in allowed, and
// returns its fields. A null or missing node is an empty mapping, so that
// required-field checks report the real problem.
func (w *walker) mapping(n *yaml.Node, path string, allowed ...string) fields {
	f := fields{w: w, path: path, node: n, m: map[string]*yaml.Node{}}
	n = deref(n)
	if isNull(n) {
		return f
	}
	if n.Kind != yaml.MappingNode {
		w.fail(n, path, "", "must be a mapping, not %s", kindName(n))
		return f
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			w.fail(k, path, "", "keys must be strings")
			continue
		}
		key := k.Value
		if !slices.Contains(allowed, key) {
			w.fail(k, join(path, key), "", "unknown field (accepted: %s)", strings.Join(allowed, ", "))
			continue
		}
		if _, dup := f.m[key]; dup {
			w.fail(k, join(path, key), "", "field given twice")
			continue
		}
		f.m[key] = v
	}
	return f
}

func (f fields) has(key string) bool {
	_, ok := f.m[key]
	return ok && !isNull(f.m[key])
}

// str returns a scalar as text. Numbers are accepted as text because YAML
// users write `version: 2` for tags and mean the string.
func (f fields) str(key string) (string, *yaml.Node, bool) {
	n := deref(f.m[key])
	if isNull(n) {
		return "", f.node, false
	}
	if n.Kind != yaml.ScalarNode {
		f.w.fail(n, join(f.path, key), "", "must be a string, not %s", kindName(n))
		return "", n, false
	}
	if n.Tag == "!!bool" {
		f.w.fail(n, join(f.path, key), n.Value, "must be a string, not a boolean (quote it)")
		return "", n, false
	}
	return n.Value, n, true
}

// required is str for a field that must be present and non-empty.
func (f fields) required(key string) (string, *yaml.Node, bool) {
	if !f.has(key) {
		f.w.fail(f.node, join(f.path, key), "", "is required")
		return "", f.node, false
	}
	s, n, ok := f.str(key)
	if !ok {
		return "", n, false
	}
	if s == "" {
		f.w.fail(n, join(f.path, key), "", "must not be empty")
		return "", n, false
	}
	return s, n, true
}

// optStr distinguishes a missing field from an empty string, which matters
// for sni where "" means "send none".
func (f fields) optStr(key string) (*string, *yaml.Node) {
	n := deref(f.m[key])
	if n == nil {
		return nil, f.node
	}
	if isNull(n) {
		empty := ""
		return &empty, n
	}
	s, n, ok := f.str(key)
	if !ok {
		return nil, n
	}
	return &s, n
}

func (f fields) boolean(key string) (bool, *yaml.Node) {
	n := deref(f.m[key])
	if isNull(n) {
		return false, f.node
	}
	var b bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
		f.w.fail(n, join(f.path, key), n.Value, "must be true or false")
		return false, n
	}
	return b, n
}

// optBool returns nil when the field is absent, so that defaults apply.
func (f fields) optBool(key string) *bool {
	if !f.has(key) {
		return nil
	}
	b, _ := f.boolean(key)
	return &b
}

// stringMap reads a mapping of strings to strings, such as tags or labels.
func (f fields) stringMap(key string) (map[string]string, *yaml.Node) {
	n := deref(f.m[key])
	if isNull(n) {
		return nil, f.node
	}
	path := join(f.path, key)
	if n.Kind != yaml.MappingNode {
		f.w.fail(n, path, "", "must be a mapping, not %s", kindName(n))
		return nil, n
	}
	out := make(map[string]string, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			f.w.fail(k, path, "", "keys must be strings")
			continue
		}
		if _, dup := out[k.Value]; dup {
			f.w.fail(k, join(path, k.Value), "", "given twice")
			continue
		}
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			f.w.fail(v, join(path, k.Value), "", "must be a string")
			continue
		}
		out[k.Value] = v.Value
	}
	return out, n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "a scalar"
	default:
		return "an unexpected node"
	}
}

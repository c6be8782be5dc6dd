// Package confnode is the tree a configuration document is read into: the
// mappings, lists and values of a YAML (or JSON) file, each with the line
// it starts on, for errors that name it.
//
// Parse reads with gopkg.in/yaml.v3, except in the init container's build
// (-tags initcontainer), which reads with ParseSubset: a parser of the
// YAML that configuration files are written in, which refuses, naming the
// line, whatever else YAML allows. yaml.v3's initialisation and size were
// about 0.4 ms of each whole-process install, which runs once per pod; the
// subset is held to yaml.v3 by a differential fuzz test (what it accepts,
// it reads as yaml.v3 does).
package confnode

// Kind is what a node holds.
type Kind int

const (
	// Scalar is a value: Value holds its text (quotes and escapes
	// resolved, as written otherwise: "true", "~", "010" stay text).
	Scalar Kind = iota + 1
	// Sequence is a list: Content holds its items.
	Sequence
	// Mapping is a mapping: Content holds key, value, key, value...
	Mapping
	// Alias is a YAML alias (*name), which yaml.v3 leaves unresolved
	// in a node tree; ParseSubset never returns one.
	Alias
)

// Node is one node of a document.
type Node struct {
	Kind    Kind
	Value   string
	Line    int
	Content []*Node
}

// KindName is how an error names the node's kind.
func (n *Node) KindName() string {
	switch n.Kind {
	case Mapping:
		return "a mapping"
	case Sequence:
		return "a list"
	case Alias:
		return "an alias"
	}
	return "a value"
}

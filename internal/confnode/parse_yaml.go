//go:build !initcontainer

package confnode

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// Parse reads a YAML or JSON document; nil for an empty one.
func Parse(data []byte) (*Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return fromYAML(doc.Content[0]), nil
}

func fromYAML(y *yaml.Node) *Node {
	n := &Node{Value: y.Value, Line: y.Line}
	switch y.Kind {
	case yaml.MappingNode:
		n.Kind = Mapping
	case yaml.SequenceNode:
		n.Kind = Sequence
	case yaml.AliasNode:
		n.Kind = Alias
	case yaml.ScalarNode:
		n.Kind = Scalar
	default:
		panic(fmt.Sprintf("confnode: yaml node kind %d inside a document", y.Kind))
	}
	for _, c := range y.Content {
		n.Content = append(n.Content, fromYAML(c))
	}
	return n
}

//go:build initcontainer

package confnode

// Parse reads a document with ParseSubset: this build does not link
// yaml.v3 (see the package documentation).
func Parse(data []byte) (*Node, error) { return ParseSubset(data) }

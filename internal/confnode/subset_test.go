//go:build !initcontainer

package confnode

import (
	"fmt"
	"strings"
	"testing"
)

// same says how a and b differ ("" when they do not): kind, value, line
// and content.
func same(a, b *Node, path string) string {
	if (a == nil) != (b == nil) {
		return fmt.Sprintf("%s: %v against %v", path, a, b)
	}
	if a == nil {
		return ""
	}
	if a.Kind != b.Kind || a.Value != b.Value || a.Line != b.Line || len(a.Content) != len(b.Content) {
		return fmt.Sprintf("%s: {%s %q line %d, %d children} against {%s %q line %d, %d children}", path,
			a.KindName(), a.Value, a.Line, len(a.Content), b.KindName(), b.Value, b.Line, len(b.Content))
	}
	for i := range a.Content {
		if d := same(a.Content[i], b.Content[i], fmt.Sprintf("%s/%d", path, i)); d != "" {
			return d
		}
	}
	return ""
}

// checkSubsetIsYAML fails when ParseSubset accepts doc and yaml.v3 reads
// it otherwise, or refuses it.
func checkSubsetIsYAML(t *testing.T, doc string) (accepted bool) {
	t.Helper()
	got, err := ParseSubset([]byte(doc))
	if err != nil {
		if !strings.HasPrefix(err.Error(), "yaml: line ") {
			t.Fatalf("%q: error %q does not name the line", doc, err)
		}
		return false
	}
	want, yerr := Parse([]byte(doc))
	if yerr != nil {
		t.Fatalf("%q: accepted as %s, but yaml.v3 refuses it: %v", doc, dump(got), yerr)
	}
	if d := same(got, want, ""); d != "" {
		t.Fatalf("%q: read otherwise than yaml.v3 reads it: %s", doc, d)
	}
	return true
}

func dump(n *Node) string {
	if n == nil {
		return "nothing"
	}
	var b strings.Builder
	var walk func(*Node)
	walk = func(n *Node) {
		switch n.Kind {
		case Scalar:
			fmt.Fprintf(&b, "%q@%d", n.Value, n.Line)
		default:
			fmt.Fprintf(&b, "%s@%d[", n.KindName(), n.Line)
			for i, c := range n.Content {
				if i > 0 {
					b.WriteString(" ")
				}
				walk(c)
			}
			b.WriteString("]")
		}
	}
	walk(n)
	return b.String()
}

// Config files as users write them: each is read, and read as yaml.v3
// reads it.
var acceptedDocs = []string{
	"",
	"# only a comment\n\n",
	"engine: nftables\n",
	"---\nengine: nftables\n...\n",
	"engine: nftables # the default is auto\nproxyUid: \"1337\"\nexcludeOutboundPorts: [22, 9090]\nexcludeInboundPorts:\n  - 15020\n  - '15090'\n",
	"excludeOutboundCidrs:\n- 10.0.0.0/8\n- fd00::/8\nredirectAllDns: true\n",
	"a: x,y\nb: http://example.com:8080/path\nc: -1\nd: 'it''s'\ne: \"tab\\there \\u00e9 \\x41 \\U0001F600 \\\\ \\\"\"\n",
	"{\"engine\": \"nftables\", \"proxyUid\": 1337,\n \"excludeOutboundPorts\": [22, 9090],\n \"xdsNodeMetadata\": {\"zone\": \"z1\", \"tags\": [\"a\", \"b\"]}}\n",
	"{\n  \"engine\":\"iptables\",\n  \"list\": [\n    1,\n    2,\n  ]\n}\n",
	"engine: nftables\r\nproxyUid: 1337\r\n",
	"xdsNodeMetadata:\n  zone: z1\n  labels:\n    app: web\n    tier: [front, back]\nengine: ebpf\n",
	"  indented: mapping\n  second: key\n",
	"[a, b]\n",
	"just a value\n",
	"key with spaces: value with spaces  \n",
	"k: {}\nl: []\n",
	"k: ~\nl: null\nm: yes\nn: 010\n",
	"k: v#not a comment\n",
	"\"quoted key\": 1\n'single': 2\n",
	"k: [ 'a' , \"b\" ]\n",
	"list:\n  - a\n  -   b # comment\n",
	// docs/capture.md's example.
	"# /etc/shunt/capture.yaml\nproxyUID: envoy            # a user name or a number\nexcludeOutboundPorts: [22, 8000-8010]\nexcludeOutboundCidrs: 169.254.169.254/32, 10.0.0.0/8\nexcludeOutboundPortsForUids: \"tcp:5432:1000-1002;udp:*:1003\"\nredirectAllDNS: true\n",
}

func TestConfigFilesAreReadAsYAMLReadsThem(t *testing.T) {
	for _, doc := range acceptedDocs {
		if !checkSubsetIsYAML(t, doc) {
			_, err := ParseSubset([]byte(doc))
			t.Errorf("%q refused: %v", doc, err)
		}
	}
}

// What the subset refuses, it refuses with the line and what is not
// supported.
func TestWhatIsNotReadIsRefusedByLine(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"a: &x 1\nb: *x\n", "line 1: anchors (&) are not supported"},
		{"a: 1\nb: !!str 2\n", "line 2: tags (!) are not supported"},
		{"a: 1\nb: *x\n", "line 2: aliases (*) are not supported"},
		{"a: |\n  text\n", "line 1: block scalars (| and >) are not supported"},
		{"a: folded\n  on two lines\n", "line 2: unexpected indentation"},
		{"a: \"open\n  quote\"\n", "line 1: a quoted value must end on its line"},
		{"a: 1\n---\nb: 2\n", "line 2: only one document"},
		{"%YAML 1.2\n---\na: 1\n", "line 1: directives are not supported"},
		{"a:\n\t- 1\n", "line 2: a tab in indentation"},
		{"? complex\n: key\n", "line 1: a value starting with '?'"},
		{"a:\nb: 1\n", "line 1: a key without a value"},
		{"a: b: c\n", "line 1: a mapping is not supported here"},
		{"- a: 1\n", "line 1: a mapping inside a list item"},
		{"{a: [1, 2}\n", "line 1: want ',' or ']'"},
		{"a: [1,\n2]\n", "line 2: a continued line must be indented more than its key"},
		{"a: \"\\q\"\n", "line 1: the escape \\q"},
		{"a: 1\n\xff\n", "line 2: invalid UTF-8"},
	} {
		_, err := ParseSubset([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one with %q", tc.doc, err, tc.want)
		}
	}
}

// FuzzSubsetIsYAML: whatever ParseSubset accepts, yaml.v3 accepts and
// reads the same. The inputs are put together from the pieces config
// files are made of, so that most of them are documents the subset reads;
// raw inputs would mostly be refused.
func FuzzSubsetIsYAML(f *testing.F) {
	for _, d := range acceptedDocs {
		f.Add([]byte(d), true)
	}
	f.Add([]byte{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9}, false)
	f.Fuzz(func(t *testing.T, b []byte, raw bool) {
		doc := string(b)
		if !raw {
			doc = assemble(b)
		}
		checkSubsetIsYAML(t, doc)
	})
}

// pieces are what assemble puts documents together from.
var pieces = []string{
	"a", "b", "key", "k k", "-1", "1", "0x1F", "true", "~", "null", "10.0.0.0/8", "fd00::/8", "http://x:1/y", "x,y", "é",
	": ", ":", " ", "  ", "\n", "\n  ", "\n    ", "\n- ", "\n  - ", "- ", "-", "#c", " # c", "[", "]", "{", "}", ", ", ",",
	"\"", "'", "\"q\\\"u\\u00e9\"", "'it''s'", "\\", "\\n", "\t", "---\n", "...\n", "\r\n", "&a ", "*a", "!t ", "|", ">", "?", "%",
}

func assemble(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		s.WriteString(pieces[int(c)%len(pieces)])
	}
	return s.String()
}

package confnode

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ParseSubset reads the YAML that configuration files are written in:
// block mappings and lists, flow mappings and lists (a JSON document is
// one), plain, single-quoted and double-quoted values on one line each,
// comments, and a leading "---" and trailing "...". It refuses, with the
// line, anchors, aliases, tags, block scalars (| and >), values that span
// lines, complex keys, directives, several documents, tabs outside quotes
// and comments, and anything that is not YAML. What it accepts it reads as
// yaml.v3 does: same kinds, values and lines (FuzzSubsetIsYAML).
func ParseSubset(data []byte) (*Node, error) {
	lines, err := splitLines(data)
	if err != nil {
		return nil, err
	}
	p := &parser{lines: lines}
	if err := p.skipBlank(); err != nil {
		return nil, err
	}
	if p.eof() {
		return nil, nil
	}
	if marker(p.lines[p.li], "---") {
		if !blankRest(p.lines[p.li][3:]) {
			return nil, p.errorf(p.li, "a value on the \"---\" line is not supported")
		}
		p.li++
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		if p.eof() {
			return nil, p.errorf(p.li-1, "an empty document is not supported")
		}
	}
	if marker(p.lines[p.li], "...") {
		return nil, p.errorf(p.li, "an empty document is not supported")
	}
	n, err := p.block(-1)
	if err != nil {
		return nil, err
	}
	if !p.eof() && marker(p.lines[p.li], "...") && blankRest(p.lines[p.li][3:]) {
		p.li++
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
	}
	if !p.eof() {
		return nil, p.errorf(p.li, "unexpected text (only one document is supported)")
	}
	return n, nil
}

type parser struct {
	lines []string
	li    int // the current line
}

// subsetError is a refusal of ParseSubset.
type subsetError struct {
	line int
	msg  string
}

func (e *subsetError) Error() string { return fmt.Sprintf("yaml: line %d: %s", e.line, e.msg) }

func (p *parser) errorf(li int, format string, args ...any) error {
	return &subsetError{line: li + 1, msg: fmt.Sprintf(format, args...)}
}

// splitLines checks the characters YAML allows and splits at line breaks.
func splitLines(data []byte) ([]string, error) {
	s := string(data)
	line := 1
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return nil, &subsetError{line, "invalid UTF-8"}
		case r == '\n':
			line++
		case r == '\r':
			if i+1 >= len(s) || s[i+1] != '\n' {
				return nil, &subsetError{line, "a carriage return without a line feed is not supported"}
			}
		case r == '\t', r >= 0x20 && r <= 0x7e, r >= 0xa0 && r <= 0xd7ff, r >= 0xe000 && r <= 0xfffd && r != 0xfeff, r >= 0x10000 && r <= 0x10ffff:
		default:
			return nil, &subsetError{line, fmt.Sprintf("character %U is not supported", r)}
		}
		i += size
	}
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.Split(s, "\n"), nil
}

func (p *parser) eof() bool { return p.li >= len(p.lines) }

// atEnd: the document ends here, at the end of the text or at "...".
func (p *parser) atEnd() bool { return p.eof() || marker(p.lines[p.li], "...") }

// skipBlank moves to the next line with content.
func (p *parser) skipBlank() error {
	for ; !p.eof(); p.li++ {
		l := p.lines[p.li]
		rest := strings.TrimLeft(l, " ")
		if strings.HasPrefix(rest, "\t") {
			return p.errorf(p.li, "a tab in indentation is not supported")
		}
		if rest != "" && rest[0] != '#' {
			if p.li > 0 && (marker(l, "---") || marker(l, "...")) && !(marker(l, "...") && blankRest(l[3:])) {
				return p.errorf(p.li, "only one document is supported")
			}
			if l[0] == '%' {
				return p.errorf(p.li, "directives are not supported")
			}
			return nil
		}
	}
	return nil
}

// marker: l starts with the document marker m.
func marker(l, m string) bool {
	return strings.HasPrefix(l, m) && (len(l) == len(m) || l[len(m)] == ' ' || l[len(m)] == '\t')
}

// blankRest: s is nothing but spaces and, after one, a comment.
func blankRest(s string) bool {
	if s == "" {
		return true
	}
	if s[0] != ' ' {
		return false
	}
	t := strings.TrimLeft(s, " ")
	return t == "" || t[0] == '#'
}

func indentOf(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }

// block reads the node that starts on the current line, indented more
// than parent, and moves past it.
func (p *parser) block(parent int) (*Node, error) {
	l := p.lines[p.li]
	c := indentOf(l)
	rest := l[c:]
	if isItem(rest) {
		return p.sequence(c)
	}
	if rest[0] == '[' || rest[0] == '{' {
		n, err := p.inline(c, parent)
		if err != nil {
			return nil, err
		}
		return n, p.next()
	}
	if _, _, ok, err := p.key(p.li, c); err != nil {
		return nil, err
	} else if ok {
		return p.mapping(c)
	}
	n, err := p.inline(c, parent)
	if err != nil {
		return nil, err
	}
	if err := p.next(); err != nil {
		return nil, err
	}
	return n, nil
}

// next moves past the current line to the next one with content.
func (p *parser) next() error {
	p.li++
	return p.skipBlank()
}

func isItem(rest string) bool { return rest == "-" || strings.HasPrefix(rest, "- ") }

// key reads the key of a block mapping at column c of line li: ok when
// the line is one, end the column after its ':'.
func (p *parser) key(li, c int) (k *Node, end int, ok bool, err error) {
	l := p.lines[li]
	rest := l[c:]
	if rest == "" {
		return nil, 0, false, nil
	}
	if rest[0] == '"' || rest[0] == '\'' {
		v, after, err := p.quoted(li, c)
		if err != nil {
			return nil, 0, false, err
		}
		t := strings.TrimLeft(l[after:], " ")
		if !strings.HasPrefix(t, ":") || (len(t) > 1 && t[1] != ' ') {
			return nil, 0, false, nil
		}
		if after-c > 1024 {
			return nil, 0, false, p.errorf(li, "a key of over 1024 characters is not supported")
		}
		return &Node{Kind: Scalar, Value: v, Line: li + 1}, len(l) - len(t) + 1, true, nil
	}
	// A plain key ends at the first ": " (or ':' ending the line) before
	// any comment.
	for i := 0; i < len(rest); i++ {
		switch {
		case rest[i] == '#' && i > 0 && rest[i-1] == ' ':
			return nil, 0, false, nil
		case rest[i] == ':' && (i+1 == len(rest) || rest[i+1] == ' '):
			text := strings.TrimRight(rest[:i], " ")
			if text == "" || i > 1024 {
				return nil, 0, false, p.errorf(li, "a key must be a value of one line and at most 1024 characters")
			}
			if err := p.plainStart(li, text); err != nil {
				return nil, 0, false, err
			}
			if strings.ContainsRune(text, '\t') {
				return nil, 0, false, p.errorf(li, "a tab outside quotes is not supported")
			}
			return &Node{Kind: Scalar, Value: text, Line: li + 1}, c + i + 1, true, nil
		}
	}
	return nil, 0, false, nil
}

// plainStart refuses a plain value whose first character YAML gives
// another meaning (or that this parser does not read).
func (p *parser) plainStart(li int, text string) error {
	switch text[0] {
	case '-':
		if len(text) == 1 || text[1] == ' ' {
			return p.errorf(li, "a list item is not supported here")
		}
	case '&':
		return p.errorf(li, "anchors (&) are not supported")
	case '*':
		return p.errorf(li, "aliases (*) are not supported")
	case '!':
		return p.errorf(li, "tags (!) are not supported")
	case '|', '>':
		return p.errorf(li, "block scalars (| and >) are not supported: write the value on one line")
	case '?', ':', ',', '[', ']', '{', '}', '#', '\'', '"', '%', '@', '`':
		return p.errorf(li, "a value starting with %q is not supported (quote it)", text[0])
	}
	return nil
}

func (p *parser) mapping(c int) (*Node, error) {
	m := &Node{Kind: Mapping, Line: p.li + 1}
	for {
		k, end, ok, err := p.key(p.li, c)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, p.errorf(p.li, "want a key and ':'")
		}
		l := p.lines[p.li]
		var v *Node
		if blankRest(l[end:]) {
			kl := p.li
			if err := p.next(); err != nil {
				return nil, err
			}
			switch {
			case !p.eof() && indentOf(p.lines[p.li]) > c:
				v, err = p.block(c)
			case !p.eof() && indentOf(p.lines[p.li]) == c && isItem(p.lines[p.li][c:]):
				v, err = p.sequence(c)
			default:
				return nil, p.errorf(kl, "a key without a value is not supported (write \"\" or [])")
			}
			if err != nil {
				return nil, err
			}
		} else {
			if l[end] != ' ' {
				return nil, p.errorf(p.li, "want a space after ':'")
			}
			col := end + len(l[end:]) - len(strings.TrimLeft(l[end:], " "))
			if v, err = p.inline(col, c); err != nil {
				return nil, err
			}
			if err := p.next(); err != nil {
				return nil, err
			}
		}
		m.Content = append(m.Content, k, v)
		if p.atEnd() {
			return m, nil
		}
		switch ind := indentOf(p.lines[p.li]); {
		case ind < c:
			return m, nil
		case ind > c:
			return nil, p.errorf(p.li, "unexpected indentation (a value must fit on its line)")
		}
	}
}

func (p *parser) sequence(c int) (*Node, error) {
	s := &Node{Kind: Sequence, Line: p.li + 1}
	for {
		l := p.lines[p.li]
		var v *Node
		var err error
		if blankRest(l[c+1:]) {
			il := p.li
			if err := p.next(); err != nil {
				return nil, err
			}
			if p.eof() || indentOf(p.lines[p.li]) <= c {
				return nil, p.errorf(il, "an empty list item is not supported")
			}
			if v, err = p.block(c); err != nil {
				return nil, err
			}
		} else {
			col := c + 1 + len(l[c+1:]) - len(strings.TrimLeft(l[c+1:], " "))
			if isItem(l[col:]) {
				return nil, p.errorf(p.li, "a list inside a list item on one line is not supported")
			}
			if _, _, ok, err := p.key(p.li, col); err != nil {
				return nil, err
			} else if ok {
				return nil, p.errorf(p.li, "a mapping inside a list item is not supported")
			}
			if v, err = p.inline(col, c); err != nil {
				return nil, err
			}
			if err := p.next(); err != nil {
				return nil, err
			}
		}
		s.Content = append(s.Content, v)
		if p.atEnd() {
			return s, nil
		}
		l = p.lines[p.li]
		switch ind := indentOf(l); {
		case ind < c:
			return s, nil
		case ind > c:
			return nil, p.errorf(p.li, "unexpected indentation (a value must fit on its line)")
		case !isItem(l[c:]):
			// The next key of a mapping whose value this list is.
			return s, nil
		}
	}
}

// inline reads the value at column col of the current line: a flow
// collection (which may span lines, each indented more than parent) or a
// value of one line; nothing but a comment may follow it. The current
// line is then the one it ends on.
func (p *parser) inline(col, parent int) (*Node, error) {
	l := p.lines[p.li]
	switch l[col] {
	case '[', '{':
		f := &flow{p: p, li: p.li, col: col, parent: parent}
		n, err := f.node()
		if err != nil {
			return nil, err
		}
		p.li = f.li
		if !blankRest(p.lines[p.li][f.col:]) {
			return nil, p.errorf(p.li, "unexpected text after a value")
		}
		return n, nil
	case '"', '\'':
		v, after, err := p.quoted(p.li, col)
		if err != nil {
			return nil, err
		}
		if !blankRest(l[after:]) {
			return nil, p.errorf(p.li, "unexpected text after a quoted value")
		}
		return &Node{Kind: Scalar, Value: v, Line: p.li + 1}, nil
	}
	text := l[col:]
	for i := 0; i < len(text); i++ {
		if text[i] == '#' && i > 0 && text[i-1] == ' ' {
			text = text[:i]
			break
		}
		if text[i] == ':' && (i+1 == len(text) || text[i+1] == ' ') {
			return nil, p.errorf(p.li, "a mapping is not supported here (quote a value holding \": \")")
		}
	}
	text = strings.TrimRight(text, " ")
	if err := p.plainStart(p.li, text); err != nil {
		return nil, err
	}
	if strings.ContainsRune(text, '\t') {
		return nil, p.errorf(p.li, "a tab outside quotes is not supported")
	}
	return &Node{Kind: Scalar, Value: text, Line: p.li + 1}, nil
}

// quoted reads the quoted value at column col of line li, which must end
// on that line; after is the column after its closing quote.
func (p *parser) quoted(li, col int) (v string, after int, err error) {
	l := p.lines[li]
	q := l[col]
	var b strings.Builder
	for i := col + 1; i < len(l); i++ {
		ch := l[i]
		if q == '\'' {
			if ch == '\'' {
				if i+1 < len(l) && l[i+1] == '\'' {
					b.WriteByte('\'')
					i++
					continue
				}
				return b.String(), i + 1, nil
			}
			b.WriteByte(ch)
			continue
		}
		switch ch {
		case '"':
			return b.String(), i + 1, nil
		case '\\':
			if i+1 >= len(l) {
				return "", 0, p.errorf(li, "a quoted value must end on its line")
			}
			i++
			n := 0
			switch l[i] {
			case '\\', '"':
				b.WriteByte(l[i])
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'x':
				n = 2
			case 'u':
				n = 4
			case 'U':
				n = 8
			default:
				return "", 0, p.errorf(li, "the escape \\%c is not supported", l[i])
			}
			if n > 0 {
				if i+n >= len(l) {
					return "", 0, p.errorf(li, "a short \\%c escape", l[i])
				}
				r, err := strconv.ParseUint(l[i+1:i+1+n], 16, 32)
				if err != nil || r > utf8.MaxRune || r >= 0xd800 && r <= 0xdfff || r == 0 {
					return "", 0, p.errorf(li, "the escape \\%s is not supported", l[i:i+1+n])
				}
				b.WriteRune(rune(r))
				i += n
			}
		default:
			b.WriteByte(ch)
		}
	}
	return "", 0, p.errorf(li, "a quoted value must end on its line")
}

// flow reads a flow collection, which may span lines.
type flow struct {
	p       *parser
	li, col int
	parent  int
}

// space moves to the next character that is not white space or a comment.
func (f *flow) space() error {
	for {
		l := f.p.lines[f.li]
		for f.col < len(l) && l[f.col] == ' ' {
			f.col++
		}
		if f.col < len(l) && l[f.col] == '\t' {
			return f.p.errorf(f.li, "a tab outside quotes is not supported")
		}
		if f.col < len(l) && !(l[f.col] == '#' && (f.col == 0 || l[f.col-1] == ' ')) {
			return nil
		}
		f.li++
		f.col = 0
		if f.li >= len(f.p.lines) {
			f.li--
			return f.p.errorf(f.li, "a flow collection not closed")
		}
		nl := f.p.lines[f.li]
		if t := strings.TrimLeft(nl, " "); t != "" && t[0] != '#' {
			if indentOf(nl) <= f.parent {
				return f.p.errorf(f.li, "a continued line must be indented more than its key")
			}
			if marker(nl, "---") || marker(nl, "...") || nl[0] == '%' {
				return f.p.errorf(f.li, "a flow collection not closed")
			}
		}
	}
}

func (f *flow) node() (*Node, error) {
	l := f.p.lines[f.li]
	switch l[f.col] {
	case '[':
		return f.collection(Sequence, ']')
	case '{':
		return f.collection(Mapping, '}')
	case '"', '\'':
		v, after, err := f.p.quoted(f.li, f.col)
		if err != nil {
			return nil, err
		}
		n := &Node{Kind: Scalar, Value: v, Line: f.li + 1}
		f.col = after
		return n, nil
	}
	start := f.col
	for ; f.col < len(l); f.col++ {
		ch := l[f.col]
		if ch == ',' || ch == '[' || ch == ']' || ch == '{' || ch == '}' || ch == '#' && f.col > 0 && l[f.col-1] == ' ' {
			break
		}
		if ch == ':' {
			if f.col+1 == len(l) || strings.IndexByte(" ,[]{}", l[f.col+1]) >= 0 {
				break
			}
			return nil, f.p.errorf(f.li, "':' inside a value is not supported in a flow collection (quote it)")
		}
		if ch == '\t' {
			return nil, f.p.errorf(f.li, "a tab outside quotes is not supported")
		}
		// YAML 1.1 parsers, yaml.v3 among them, give some of these a
		// meaning inside a flow collection's values too.
		if strings.IndexByte("?&*!|>'\"%@`#", ch) >= 0 {
			return nil, f.p.errorf(f.li, "%q inside a value is not supported in a flow collection (quote it)", ch)
		}
	}
	text := strings.TrimRight(l[start:f.col], " ")
	if text == "" {
		return nil, f.p.errorf(f.li, "want a value")
	}
	if err := f.p.plainStart(f.li, text); err != nil {
		return nil, err
	}
	return &Node{Kind: Scalar, Value: text, Line: f.li + 1}, nil
}

func (f *flow) collection(kind Kind, end byte) (*Node, error) {
	n := &Node{Kind: kind, Line: f.li + 1}
	f.col++
	for {
		if err := f.space(); err != nil {
			return nil, err
		}
		if f.p.lines[f.li][f.col] == end {
			f.col++
			return n, nil
		}
		item, err := f.node()
		if err != nil {
			return nil, err
		}
		n.Content = append(n.Content, item)
		if kind == Mapping {
			if item.Kind != Scalar {
				return nil, f.p.errorf(f.li, "a key must be a value")
			}
			quotedKey := f.p.lines[f.li][f.col-1] == '"' || f.p.lines[f.li][f.col-1] == '\''
			keyLine := f.li
			if f.col >= len(f.p.lines[f.li]) || f.p.lines[f.li][f.col] != ':' {
				return nil, f.p.errorf(f.li, "want ':' after a key")
			}
			f.col++
			if l := f.p.lines[f.li]; !quotedKey && f.col < len(l) && l[f.col] != ' ' {
				return nil, f.p.errorf(f.li, "want a space after ':'")
			}
			if err := f.space(); err != nil {
				return nil, err
			}
			if f.li != keyLine {
				return nil, f.p.errorf(f.li, "a value must start on its key's line")
			}
			if c := f.p.lines[f.li][f.col]; c == ',' || c == end {
				return nil, f.p.errorf(f.li, "a key without a value is not supported")
			}
			v, err := f.node()
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, v)
		}
		if err := f.space(); err != nil {
			return nil, err
		}
		switch f.p.lines[f.li][f.col] {
		case ',':
			f.col++
		case end:
		default:
			return nil, f.p.errorf(f.li, "want ',' or '%c'", end)
		}
	}
}

package mesh

import (
	"fmt"
	"strconv"
	"strings"
)

// FieldError is a refused resource: it names the file, the document inside
// it, the field and the value, so that the user can fix it without guessing.
type FieldError struct {
	Origin Origin
	// Line is the 1-based line of the field in the file, 0 when unknown.
	Line int
	// Field is the dotted path as written, e.g. spec.networking.address.
	Field string
	// Value is the offending value as written; empty when the field is missing.
	Value  string
	Reason string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.Origin.String())
	if e.Line > 0 {
		b.WriteString(" (line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(")")
	}
	if e.Field != "" {
		b.WriteString(": ")
		b.WriteString(e.Field)
	}
	if e.Value != "" {
		fmt.Fprintf(&b, " %q", e.Value)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	return b.String()
}

// Warning is something accepted but probably not what the user meant. mesh
// returns warnings rather than logging them, so that the caller decides where
// they go.
type Warning struct {
	Origin  Origin
	Field   string
	Message string
}

func (w Warning) String() string {
	s := w.Origin.String()
	if w.Field != "" {
		s += ": " + w.Field
	}
	return s + ": " + w.Message
}

package cni

import (
	"regexp"
	"testing"
)

// validContainerID is written by hand (no regexp compiled at start); this
// is the expression it must match, exactly.
var containerIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.\-]*$`)

func TestValidContainerIDEqualsItsExpression(t *testing.T) {
	for _, id := range []string{
		"", "a", "Z", "0", "_", ".", "-", "..", "a.b-c_d", "0123456789abcdef", "-a", ".a", "_a", "a/b", "a b",
		"../x", "a\x00", "é", "aé", "a\n", "A_", "a-", "9.",
	} {
		if got, want := validContainerID(id), containerIDRE.MatchString(id); got != want {
			t.Errorf("validContainerID(%q) = %v, the expression says %v", id, got, want)
		}
	}
}

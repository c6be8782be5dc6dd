package iptables

import "testing"

// iptables-nft prints -v -S with the counters first, as -save does; legacy
// iptables at the end. Status shows both the same way.
func TestCountersOfBothVariants(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"[12:720] -A SHUNT_OUTPUT -p tcp -j REDIRECT --to-ports 15001", "[12 pkts 720 bytes] -A SHUNT_OUTPUT -p tcp -j REDIRECT --to-ports 15001"},
		{"-A SHUNT_OUTPUT -p tcp -c 12 720 -j REDIRECT --to-ports 15001", "[12 pkts 720 bytes] -A SHUNT_OUTPUT -p tcp -j REDIRECT --to-ports 15001"},
		{"-N SHUNT_OUTPUT", "-N SHUNT_OUTPUT"},
		{"[x:1] -A C", "[x:1] -A C"},
		{"[1:] -A C", "[1:] -A C"},
		{"[1:2]-A C", "[1:2]-A C"},
	} {
		if got := withCounters(counterPrefixLast(c.in)); got != c.want {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
	}
}

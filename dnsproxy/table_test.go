package dnsproxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestTableLookup(t *testing.T) {
	tb := MustTable(map[string][]netip.Addr{
		"httpbin.mesh":    addrs("240.0.0.1", "fd00::1"),
		"HTTPBIN.org.":    addrs("240.0.0.2"),
		"*.example.com":   addrs("240.0.0.3"),
		"*.a.example.com": addrs("240.0.0.4"),
		"v6only.mesh":     addrs("fd00::5"),
		"mapped.mesh":     addrs("::ffff:240.0.0.6"),
	}, TableOptions{})
	tests := []struct {
		name   string
		v4, v6 string
		ok     bool
	}{
		{"httpbin.mesh.", "240.0.0.1", "fd00::1", true},
		{"HttpBin.Mesh", "240.0.0.1", "fd00::1", true},
		{"httpbin.org", "240.0.0.2", "", true},
		{"x.example.com", "240.0.0.3", "", true},
		{"x.y.example.com", "240.0.0.3", "", true},
		{"x.a.example.com", "240.0.0.4", "", true},
		{"example.com", "", "", false},
		{"v6only.mesh", "", "fd00::5", true},
		// As Envoy's dns_filter: Kuma's IPv6 form of a VIP is an AAAA.
		{"mapped.mesh", "", "::ffff:240.0.0.6", true},
		{"other.mesh", "", "", false},
	}
	for _, tt := range tests {
		v4, v6, ok := tb.Lookup(tt.name)
		if ok != tt.ok {
			t.Errorf("Lookup(%q) ok = %v, want %v", tt.name, ok, tt.ok)
			continue
		}
		if got := join(v4); got != tt.v4 {
			t.Errorf("Lookup(%q) v4 = %q, want %q", tt.name, got, tt.v4)
		}
		if got := join(v6); got != tt.v6 {
			t.Errorf("Lookup(%q) v6 = %q, want %q", tt.name, got, tt.v6)
		}
	}
}

func join(a []netip.Addr) string {
	var s []string
	for _, x := range a {
		s = append(s, x.String())
	}
	return strings.Join(s, ",")
}

func TestNewTableErrorsNameTheEntry(t *testing.T) {
	tests := []struct {
		entries map[string][]netip.Addr
		want    []string
	}{
		{map[string][]netip.Addr{"bad name.mesh": addrs("240.0.0.1")}, []string{`"bad name.mesh"`}},
		{map[string][]netip.Addr{"a.*.mesh": addrs("240.0.0.1")}, []string{`"a.*.mesh"`}},
		{map[string][]netip.Addr{"empty.mesh": nil}, []string{`"empty.mesh"`, "no addresses"}},
		{map[string][]netip.Addr{"zero.mesh": {netip.IPv4Unspecified()}}, []string{`"zero.mesh"`, `"0.0.0.0"`}},
		{map[string][]netip.Addr{"dup.mesh": addrs("240.0.0.1"), "DUP.mesh.": addrs("240.0.0.2")}, []string{"given twice"}},
		{map[string][]netip.Addr{strings.Repeat("a", 64) + ".mesh": addrs("240.0.0.1")}, []string{strings.Repeat("a", 64)}},
	}
	for _, tt := range tests {
		_, err := NewTable(tt.entries, TableOptions{})
		if err == nil {
			t.Errorf("NewTable(%v) succeeded", tt.entries)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("NewTable(%v) error %q does not mention %s", tt.entries, err, w)
			}
		}
	}
	if _, err := NewTable(nil, TableOptions{TTL: time.Millisecond}); err == nil {
		t.Error("a TTL under a second was accepted")
	}
}

func TestParseTableFile(t *testing.T) {
	good := []string{
		"httpbin.mesh: [240.0.0.1, \"fd00::1\"]\n\"*.example.com\": 240.0.0.2\n",
		`{"httpbin.mesh": ["240.0.0.1", "fd00::1"], "*.example.com": ["240.0.0.2"]}`,
	}
	for _, g := range good {
		m, err := ParseTableFile([]byte(g))
		if err != nil {
			t.Fatalf("%s: %v", g, err)
		}
		tb, err := NewTable(m, TableOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v4, v6, _ := tb.Lookup("httpbin.mesh"); join(v4) != "240.0.0.1" || join(v6) != "fd00::1" {
			t.Errorf("%s: httpbin.mesh = %v %v", g, v4, v6)
		}
		if v4, _, _ := tb.Lookup("a.example.com"); join(v4) != "240.0.0.2" {
			t.Errorf("%s: a.example.com = %v", g, v4)
		}
	}
	for _, bad := range []struct{ in, want string }{
		{"httpbin.mesh: [240.0.0.999]\n", `"240.0.0.999"`},
		{"httpbin.mesh: {a: b}\n", `"httpbin.mesh"`},
		{"[1, 2]\n", "parse"},
	} {
		_, err := ParseTableFile([]byte(bad.in))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseTableFile(%q) = %v, want an error mentioning %s", bad.in, err, bad.want)
		}
	}
}

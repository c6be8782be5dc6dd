package resolvconf

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// The capture does not link miekg/dns; the DNS interceptor, which does,
// must agree with it on which search domains are names.
func TestDomainNameRulesAgreeWithTheDNSLibrary(t *testing.T) {
	l63, l64 := strings.Repeat("a", 63), strings.Repeat("a", 64)
	names := []string{
		"", ".", "..", "a", "a.", "a..", ".a", "a..b", "cluster.local", "Cluster.Local.", "svc.cluster.local",
		l63, l64, l63 + ".", l64 + ".", l63 + "." + l63, `a\.b`, `a\.`, `a\\.`, `a\\\.`, `a\\`, `a\`, `\`, `\\`,
		`a\065b`, `a\06`, `a\0650.`, `\065`, `\.`, `\..`, `a\.\.`, "a b", "-x.example", "x_y.example",
		strings.Repeat(l63+".", 3) + strings.Repeat("a", 61), strings.Repeat(l63+".", 3) + strings.Repeat("a", 62),
		strings.Repeat(l63+".", 3) + strings.Repeat("a", 63), strings.Repeat(l63+".", 4), strings.Repeat("a.", 128),
		strings.Repeat("a.", 127) + "bb", strings.Repeat(`\065.`, 128), strings.Repeat(`\065.`, 129),
	}
	for _, n := range names {
		_, want := dns.IsDomainName(n)
		if got := isDomainName(n); got != want {
			t.Errorf("isDomainName(%q) = %v, miekg/dns says %v", n, got, want)
		}
		if n != "" {
			if got, want := fqdn(n), dns.Fqdn(n); got != want {
				t.Errorf("fqdn(%q) = %q, miekg/dns says %q", n, got, want)
			}
		}
	}
}

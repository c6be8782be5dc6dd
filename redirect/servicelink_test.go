package redirect

import (
	"regexp"
	"strings"
	"testing"
)

// The service-link matchers are written by hand (no regexp compiled at
// start); these expressions are what they must match, exactly.
var (
	serviceLinkNameRE = regexp.MustCompile(`^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$`)
	serviceLinkURLRE  = regexp.MustCompile(`^(tcp|udp|sctp)://[^\s]+:[0-9]+$`)
)

func TestServiceLinkMatchersEqualTheirExpressions(t *testing.T) {
	names := []string{
		"", "_", "SHUNT", "SHUNT_SERVICE_HOST", "_SERVICE_HOST", "X_SERVICE_HOST", "SERVICE_HOST",
		"SHUNT_SERVICE_PORT", "_SERVICE_PORT", "SHUNT_SERVICE_PORT_", "SHUNT_SERVICE_PORT__", "SHUNT_SERVICE_PORT_DNS",
		"SHUNT_SERVICE_PORTX", "SHUNT_SERVICE_PORT_dns", "shunt_SERVICE_HOST", "SHUNT_SERVICE_HOST_X",
		"SHUNT_PORT", "SHUNT_PORT_53", "SHUNT_PORT_53_", "SHUNT_PORT_53_UDP", "SHUNT_PORT_53_SCTP", "SHUNT_PORT_53_TCP_PROTO",
		"SHUNT_PORT_53_UDP_PORT", "SHUNT_PORT_53_UDP_ADDR", "SHUNT_PORT_53_UDP_ADDRX", "SHUNT_PORT__UDP", "SHUNT_PORT_5x_UDP",
		"SHUNT_PORT_53_ICMP", "_PORT_53_UDP", "A_PORT_1_TCP", "SHUNT_DNS_PORT_53_UDP_PROTO", "SHUNT_OUTBOUND_PORT",
		"SHUNT_DNS_PORT", "SHUNT_PORT_53_UDP_PORT_53_TCP", "SHUNT_SERVICE_PORT_PORT_1_TCP", "A__SERVICE_HOST",
		"SHUNT-X_SERVICE_HOST", "SHUNT_PORT_0_TCP_PORT", "SHUNT_PORT_80_TCP_PORT_", "SHUNT_SERVICE_PORT_SERVICE_HOST",
	}
	for _, ln := range kubeletServiceLinks {
		name, _, _ := strings.Cut(ln, "=")
		names = append(names, name)
	}
	for _, n := range names {
		if got, want := isServiceLinkName(n), serviceLinkNameRE.MatchString(n); got != want {
			t.Errorf("isServiceLinkName(%q) = %v, the expression says %v", n, got, want)
		}
	}
	values := []string{
		"", "53", "udp://10.96.0.11:53", "tcp://[fd00::1]:80", "sctp://h:1", "http://h:1", "udp://:53", "udp://h:",
		"udp://h:5x", "udp://h 1:53", "udp://h\t:53", "udp://h:53\n", "udp://", "udp://h", "udp://a:b:53", "UDP://h:53",
		"udp:/h:53", "udp://h::53", "udp://\xff:53", "udp://h:53 ", "tcp://1.2.3.4:8080:",
	}
	for _, v := range values {
		if got, want := isServiceLinkURL(v), serviceLinkURLRE.MatchString(v); got != want {
			t.Errorf("isServiceLinkURL(%q) = %v, the expression says %v", v, got, want)
		}
	}
}

func TestOptionsIsTheCallersToChange(t *testing.T) {
	o := Options()
	o[0].Key = "changed"
	if Options()[0].Key == "changed" {
		t.Error("changing what Options returned changed the shared table")
	}
}

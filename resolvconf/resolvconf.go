// Package resolvconf is the one parser of resolv.conf(5) in shunt: the
// capture reads the workload's nameservers from it and the DNS interceptor
// its forwarding resolvers and search list, by the same rules.
package resolvconf

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Config is what shunt needs from a workload's resolv.conf: the
// resolvers (to capture DNS to, and to forward to) and the search list used
// for the search-domain shortcut.
type Config struct {
	Nameservers []netip.AddrPort // port 53 unless the address carried one
	Search      []string         // fully qualified, lower case
	Ndots       int              // 1 when not set, as in glibc
	Options     []string         // every option as written, ndots included
}

// Parse parses resolv.conf(5) content. Comments (# or ;) and unknown
// keywords are ignored like glibc does; a nameserver that is not an IP
// address is an error, because silently dropping it would change where
// queries go.
func Parse(b []byte) (Config, error) {
	rc := Config{Ndots: 1}
	s := bufio.NewScanner(bytes.NewReader(b))
	line := 0
	for s.Scan() {
		line++
		text := s.Text()
		if i := strings.IndexAny(text, "#;"); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) < 2 {
				return Config{}, fmt.Errorf("resolv.conf line %d: nameserver without an address", line)
			}
			ap, err := parseNameserver(f[1])
			if err != nil {
				return Config{}, fmt.Errorf("resolv.conf line %d: nameserver %q: %w", line, f[1], err)
			}
			rc.Nameservers = append(rc.Nameservers, ap)
		case "search", "domain":
			// The last search or domain line wins, as in glibc.
			rc.Search = rc.Search[:0]
			for _, d := range f[1:] {
				if !isDomainName(d) {
					return Config{}, fmt.Errorf("resolv.conf line %d: search domain %q is not a domain name", line, d)
				}
				rc.Search = append(rc.Search, strings.ToLower(fqdn(d)))
			}
		case "options":
			for _, o := range f[1:] {
				rc.Options = append(rc.Options, o)
				if v, ok := strings.CutPrefix(o, "ndots:"); ok {
					n, err := strconv.Atoi(v)
					if err != nil || n < 0 {
						return Config{}, fmt.Errorf("resolv.conf line %d: option %q: ndots must be a non-negative integer", line, o)
					}
					rc.Ndots = min(n, 15) // glibc caps ndots at 15
				}
			}
		}
	}
	if err := s.Err(); err != nil {
		return Config{}, fmt.Errorf("read resolv.conf: %w", err)
	}
	return rc, nil
}

// parseNameserver accepts an address, an address with a port, or an IPv6
// address with a zone.
func parseNameserver(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("not an IP address")
	}
	return netip.AddrPortFrom(a.Unmap(), 53), nil
}

// Addrs are the nameservers' addresses without port or zone, IPv4-mapped
// ones as IPv4, each once: what kernel rules match.
func (c Config) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, ap := range c.Nameservers {
		a := ap.Addr().WithZone("").Unmap()
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// isDomainName reports whether s is a domain name in presentation form, as
// the DNS interceptor's library (miekg/dns) accepts them: labels of at most
// 63 octets, none empty but the root, \X and \DDD escapes each one octet,
// at most 256 octets of labels with their length bytes. It is here, not
// taken from that library, so that the capture commands, which parse
// resolv.conf, do not link and initialise a DNS library they have no other
// use for (the test checks both agree).
func isDomainName(s string) bool {
	if s == "" {
		return false
	}
	if s == "." {
		return true
	}
	name := fqdn(s)
	wire, label := 0, 0
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case '\\':
			switch {
			case i+3 < len(name) && isDigit(name[i+1]) && isDigit(name[i+2]) && isDigit(name[i+3]):
				i += 3
			case i+1 < len(name):
				i++
			default:
				return false
			}
			label++
		case '.':
			// A leading dot, or two in a row.
			if label == 0 || label > 63 {
				return false
			}
			wire += 1 + label
			if wire > 256 {
				return false
			}
			label = 0
		default:
			label++
		}
	}
	// The name ends with a dot; it must not have been escaped.
	return label == 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// fqdn adds the final dot unless s ends with one that is not escaped.
func fqdn(s string) string {
	if body, ok := strings.CutSuffix(s, "."); ok {
		// An even number of backslashes before the dot escape each other.
		if (len(body)-len(strings.TrimRight(body, `\`)))%2 == 0 {
			return s
		}
	}
	return s + "."
}

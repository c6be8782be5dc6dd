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

	"github.com/miekg/dns"
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
				if _, ok := dns.IsDomainName(d); !ok {
					return Config{}, fmt.Errorf("resolv.conf line %d: search domain %q is not a domain name", line, d)
				}
				rc.Search = append(rc.Search, strings.ToLower(dns.Fqdn(d)))
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

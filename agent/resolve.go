package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// HostResolver resolves the hostnames of DNS-resolved clusters, returning
// every IPv4 and IPv6 address and how long the answer may be kept.
type HostResolver interface {
	Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error)
}

// UpstreamResolver asks the workload's own resolvers directly, with the
// capture-exempt socket mark: the agent must learn what the proxy will
// connect to, and asking its own interceptor would answer mesh names with
// VIPs.
type UpstreamResolver struct {
	Upstreams []netip.AddrPort
	// Mark is set as SO_MARK on each query socket (0: none).
	Mark    uint32
	Timeout time.Duration // per upstream and query type; default 2s
}

// Resolve implements HostResolver. An IP literal resolves to itself.
func (r *UpstreamResolver) Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, time.Hour, nil
	}
	if len(r.Upstreams) == 0 {
		return nil, 0, errors.New("no upstream resolvers")
	}
	var addrs []netip.Addr
	ttl := time.Duration(-1)
	var errs []error
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		got, t, err := r.query(ctx, host, qt)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		addrs = append(addrs, got...)
		if t >= 0 && (ttl < 0 || t < ttl) {
			ttl = t
		}
	}
	if len(errs) == 2 {
		return nil, 0, fmt.Errorf("resolve %s: %w", host, errors.Join(errs...))
	}
	if ttl < 0 {
		ttl = 0
	}
	return addrs, ttl, nil
}

func (r *UpstreamResolver) query(ctx context.Context, host string, qt uint16) ([]netip.Addr, time.Duration, error) {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	mark := int(r.Mark)
	d := &net.Dialer{Timeout: timeout}
	if mark != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, mark)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(host), qt)
	var lastErr error
	for _, up := range r.Upstreams {
		for _, netw := range []string{"udp", "tcp"} {
			c := &dns.Client{Net: netw, Dialer: d, Timeout: timeout}
			in, _, err := c.ExchangeContext(ctx, m, up.String())
			if err != nil {
				lastErr = fmt.Errorf("%s %s via %s: %w", dns.TypeToString[qt], host, up, err)
				break
			}
			if in.Truncated && netw == "udp" {
				continue
			}
			if in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError {
				lastErr = fmt.Errorf("%s %s via %s: %s", dns.TypeToString[qt], host, up, dns.RcodeToString[in.Rcode])
				break
			}
			return answers(in)
		}
	}
	return nil, 0, lastErr
}

// answers collects the A and AAAA records and their smallest TTL (-1 when
// there is none: the name has no address of that type).
func answers(in *dns.Msg) ([]netip.Addr, time.Duration, error) {
	var out []netip.Addr
	ttl := time.Duration(-1)
	for _, rr := range in.Answer {
		var a netip.Addr
		switch v := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(v.A.To4())
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(v.AAAA)
		default:
			continue
		}
		if !a.IsValid() {
			continue
		}
		out = append(out, a.Unmap())
		if t := time.Duration(rr.Header().Ttl) * time.Second; ttl < 0 || t < ttl {
			ttl = t
		}
	}
	return out, ttl, nil
}

package main

import (
	"net"
	"net/netip"
	"strings"
	"time"

	dnstablev3 "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	"github.com/miekg/dns"
)

// dnsServer is the dns_filter of a UDP listener: names of its inline table
// answered with their addresses, every other name NXDOMAIN.
type dnsServer struct {
	srv *dns.Server
}

type dnsTable map[string]dnsEntry

type dnsEntry struct {
	addrs []netip.Addr
	ttl   uint32
}

func newDNSTable(t *dnstablev3.DnsTable) dnsTable {
	out := dnsTable{}
	for _, d := range t.GetVirtualDomains() {
		e := dnsEntry{ttl: uint32(d.GetAnswerTtl().AsDuration() / time.Second)}
		if e.ttl == 0 {
			e.ttl = 300 // Envoy's default
		}
		for _, a := range d.GetEndpoint().GetAddressList().GetAddress() {
			if ip, err := netip.ParseAddr(a); err == nil {
				e.addrs = append(e.addrs, ip)
			}
		}
		out[strings.ToLower(dns.Fqdn(d.GetName()))] = e
	}
	return out
}

func serveDNS(pc net.PacketConn, table func() dnsTable) *dnsServer {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		if len(q.Question) == 1 {
			qq := q.Question[0]
			e, ok := table()[strings.ToLower(qq.Name)]
			if !ok {
				m.Rcode = dns.RcodeNameError
			}
			for _, a := range e.addrs {
				hdr := dns.RR_Header{Name: qq.Name, Class: dns.ClassINET, Ttl: e.ttl}
				switch {
				case qq.Qtype == dns.TypeA && a.Is4():
					hdr.Rrtype = dns.TypeA
					m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
				case qq.Qtype == dns.TypeAAAA && a.Is6():
					hdr.Rrtype = dns.TypeAAAA
					m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
				}
			}
		}
		_ = w.WriteMsg(m)
	})
	s := &dnsServer{srv: &dns.Server{PacketConn: pc, Handler: h}}
	go func() { _ = s.srv.ActivateAndServe() }()
	return s
}

func (s *dnsServer) Close() error { return s.srv.Shutdown() }

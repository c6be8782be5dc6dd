package dnsproxy

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeUpstream is an in-process authoritative server for unit tests; the
// real-peer tests in tests/dns use bind9.
type fakeUpstream struct {
	addr    netip.AddrPort
	queries atomic.Int64
	mu      sync.Mutex
	ids     []uint16
	handler func(w dns.ResponseWriter, r *dns.Msg)
}

func startUpstream(t *testing.T, h func(w dns.ResponseWriter, r *dns.Msg)) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{handler: h}
	var pc net.PacketConn
	var ln net.Listener
	// The same port number for UDP and TCP; another process on this
	// machine may hold the TCP one: pick again.
	for try := 1; ; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		f.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		if ln, err = net.Listen("tcp", f.addr.String()); err == nil {
			break
		}
		pc.Close()
		if try == 10 {
			t.Fatal(err)
		}
	}
	mux := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		f.queries.Add(1)
		f.mu.Lock()
		f.ids = append(f.ids, r.Id)
		f.mu.Unlock()
		f.handler(w, r)
	})
	us := &dns.Server{PacketConn: pc, Handler: mux}
	ts := &dns.Server{Listener: ln, Handler: mux}
	go func() { _ = us.ActivateAndServe() }()
	go func() { _ = ts.ActivateAndServe() }()
	t.Cleanup(func() { _ = us.Shutdown(); _ = ts.Shutdown() })
	return f
}

// zone answers like a small authoritative server.
func zone(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	soa, _ := dns.NewRR("example.org. 300 IN SOA ns. host. 1 60 60 60 60")
	switch {
	case q.Name == "www.example.org." && q.Qtype == dns.TypeA:
		rr, _ := dns.NewRR("www.example.org. 300 IN A 192.0.2.10")
		m.Answer = append(m.Answer, rr)
	case q.Name == "big.example.org." && q.Qtype == dns.TypeTXT:
		for i := 0; i < 20; i++ {
			rr, _ := dns.NewRR(`big.example.org. 300 IN TXT "` + strings.Repeat("a", 90) + string(rune('a'+i)) + `"`)
			m.Answer = append(m.Answer, rr)
		}
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), opt.Do())
		}
		_, isUDP := w.RemoteAddr().(*net.UDPAddr)
		if isUDP {
			m.Truncate(dns.MinMsgSize)
			if opt := r.IsEdns0(); opt != nil {
				m.Truncate(int(opt.UDPSize()))
			}
		}
	case q.Name == "www.example.org.":
		m.Ns = append(m.Ns, soa) // NODATA
	case q.Name == "short.example.org.":
		rr, _ := dns.NewRR("short.example.org. 1 IN A 192.0.2.11")
		m.Answer = append(m.Answer, rr)
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa)
	}
	if opt := r.IsEdns0(); opt != nil && m.IsEdns0() == nil {
		m.SetEdns0(1232, opt.Do())
	}
	_ = w.WriteMsg(m)
}

// silentUpstream is a UDP/TCP address that never answers.
func silentUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

type running struct {
	srv  *Server
	udp  string
	done chan error
}

func startServer(t *testing.T, cfg Config) *running {
	t.Helper()
	if cfg.Listen == nil {
		cfg.Listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}
	}
	if cfg.UDPSockets == 0 {
		cfg.UDPSockets = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, done: make(chan error, 1)}
	go func() { r.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-r.done:
		t.Fatalf("server did not start: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("server did not start")
	}
	r.udp = srv.Addrs()[0].String()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

func (r *running) ask(t *testing.T, net, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: net, Timeout: 5 * time.Second, UDPSize: 65535}
	resp, _, err := c.Exchange(m, r.udp)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], net, err)
	}
	return resp
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

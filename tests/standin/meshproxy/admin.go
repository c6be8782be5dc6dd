package main

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"os"
)

// serveAdmin answers the part of Envoy's admin API shunt uses: /ready
// (LIVE once the first clusters, listeners and their secrets are in),
// /drain_listeners and /quitquitquit.
func (p *proxy) serveAdmin(ctx context.Context, addr, addrPath string, stop func()) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		p.mu.Lock()
		ready := p.ready
		p.mu.Unlock()
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "PRE_INITIALIZING\n")
			return
		}
		_, _ = io.WriteString(w, "LIVE\n")
	})
	mux.HandleFunc("/drain_listeners", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		p.bindMu.Lock()
		for k, b := range p.bound {
			_ = b.close()
			delete(p.bound, k)
		}
		p.bindMu.Unlock()
		_, _ = io.WriteString(w, "OK\n")
	})
	mux.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		_, _ = io.WriteString(w, "OK\n")
		stop()
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("admin %s: %v", addr, err)
	}
	if addrPath != "" {
		if err := os.WriteFile(addrPath, []byte(ln.Addr().String()), 0o644); err != nil {
			log.Fatalf("--admin-address-path: %v", err)
		}
	}
	srv := &http.Server{Handler: mux}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	_ = srv.Serve(ln)
}

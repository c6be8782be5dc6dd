package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// health is what /readyz reports: ready once the plugin is chained, so a
// rolling update of the agents waits for each node to be covered.
type health struct {
	mu     sync.Mutex
	reason string // why the agent is not ready; "" when ready
}

func (h *health) set(reason string) {
	h.mu.Lock()
	h.reason = reason
	h.mu.Unlock()
}

func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.URL.Path == "/healthz" {
		fmt.Fprintln(w, "ok")
		return
	}
	h.mu.Lock()
	reason := h.reason
	h.mu.Unlock()
	if reason != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, reason)
		return
	}
	fmt.Fprintln(w, "ok: plugin chained")
}

// serveHealth serves /healthz and /readyz on addr until ctx ends.
func serveHealth(ctx context.Context, addr string, h *health, log *slog.Logger) (func(), error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", h)
	mux.Handle("GET /readyz", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health endpoint", "err", err)
		}
	}()
	log.Info("serving /healthz and /readyz", "addr", ln.Addr().String())
	return func() {
		// The agent is stopping: answer no more probes, wait for none.
		_ = srv.Close()
		<-done
	}, nil
}

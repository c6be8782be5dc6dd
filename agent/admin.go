package agent

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/redirect"
)

func dnsproxyBounds() []time.Duration { return dnsproxy.LatencyBounds() }

// Handler serves the admin endpoints: /healthz (the process answers),
// /readyz (rules in place and a snapshot loaded), /metrics (Prometheus) and
// /snapshot (the snapshot in force, with the installed plan and the
// connection status, as JSON).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ok, why := a.Ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + why + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /snapshot", func(w http.ResponseWriter, _ *http.Request) {
		s := a.snap.Load()
		if s == nil {
			http.Error(w, "no snapshot yet", http.StatusServiceUnavailable)
			return
		}
		out := struct {
			Snapshot any            `json:"snapshot"`
			Plan     *redirect.Plan `json:"installedPlan,omitempty"`
			Source   *SourceStatus  `json:"source,omitempty"`
		}{Snapshot: s, Plan: a.plan.Load()}
		if f := a.opts.SourceStatus; f != nil {
			st := f()
			out.Source = &st
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	})
	return mux
}

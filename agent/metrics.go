package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics live in the agent's own registry: embedding shunt in another
// program must not collide with that program's global metrics.
type metrics struct {
	reg *prometheus.Registry

	snapshotsApplied prometheus.Counter
	snapshotErrors   prometheus.Counter
	reconciles       prometheus.Counter
	installs         prometheus.Counter
	installFailures  prometheus.Counter
	drifts           prometheus.Counter
	resolveFailures  prometheus.Counter
}

func newMetrics(a *Agent) *metrics {
	reg := prometheus.NewRegistry()
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	m := &metrics{
		reg:              reg,
		snapshotsApplied: counter("shunt_agent_snapshots_applied_total", "Agent snapshots applied (names, lockdown, rules)."),
		snapshotErrors:   counter("shunt_agent_snapshot_errors_total", "Snapshots whose names the DNS table refused (the previous table stayed)."),
		reconciles:       counter("shunt_capture_reconciles_total", "Comparisons of the wanted capture with the installed one."),
		installs:         counter("shunt_capture_installs_total", "Successful installs of the capture rules (changes and repairs)."),
		installFailures:  counter("shunt_capture_install_failures_total", "Failed installs of the capture rules (retried)."),
		drifts:           counter("shunt_capture_drift_repairs_total", "Times the live rules differed from what shunt installed and were restored."),
		resolveFailures:  counter("shunt_egress_resolve_failures_total", "Failed resolutions of DNS-resolved cluster hosts under egress lockdown."),
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(&stateCollector{a: a})
	return m
}

// stateCollector reads, at scrape time, what other parts already count:
// the DNS interceptor's counters, the source's connection, the snapshot and
// the installed plan.
type stateCollector struct{ a *Agent }

var (
	descQueries      = prometheus.NewDesc("shunt_dns_queries_total", "DNS queries by type and outcome (table, search, cache, stale, forwarded, nxdomain, refused, servfail, formerr, dropped).", []string{"qtype", "outcome"}, nil)
	descTruncated    = prometheus.NewDesc("shunt_dns_truncated_total", "UDP answers sent truncated (the client retries over TCP).", nil, nil)
	descCacheHits    = prometheus.NewDesc("shunt_dns_cache_hits_total", "Forwarded names answered from the cache (stale answers included).", nil, nil)
	descCacheMiss    = prometheus.NewDesc("shunt_dns_cache_misses_total", "Forwarded names not in the cache.", nil, nil)
	descTCPConns     = prometheus.NewDesc("shunt_dns_tcp_connections", "Open DNS-over-TCP connections.", nil, nil)
	descPanics       = prometheus.NewDesc("shunt_dns_panics_total", "Recovered panics while answering.", nil, nil)
	descUpQueries    = prometheus.NewDesc("shunt_dns_upstream_queries_total", "Queries sent to an upstream resolver.", []string{"upstream"}, nil)
	descUpFailures   = prometheus.NewDesc("shunt_dns_upstream_failures_total", "Upstream attempts that failed (timeout, network error, SERVFAIL, REFUSED).", []string{"upstream"}, nil)
	descUpLatency    = prometheus.NewDesc("shunt_dns_upstream_latency_seconds", "Latency of successful upstream attempts.", []string{"upstream"}, nil)
	descKernelDNS    = prometheus.NewDesc("shunt_dns_kernel_queries_total", "Queries the kernel answerer on lo saw, by outcome: table and cache were answered in the kernel (and are not in shunt_dns_queries_total); missed, too_big, passed and tracked went on to the interceptor.", []string{"outcome"}, nil)
	descTableNames   = prometheus.NewDesc("shunt_dns_table_names", "Names (wildcards included) the interceptor answers from the snapshot.", nil, nil)
	descXDSConnected = prometheus.NewDesc("shunt_xds_connected", "1 while a stream to the control plane is open and answered.", nil, nil)
	descXDSReconnect = prometheus.NewDesc("shunt_xds_reconnects_total", "Streams to the control plane opened after the first.", nil, nil)
	descXDSNACK      = prometheus.NewDesc("shunt_xds_nack", "1 while the last response of some type was rejected (NACK).", nil, nil)
	descSnapshot     = prometheus.NewDesc("shunt_agent_snapshot_info", "The snapshot in force (value 1), by version.", []string{"version"}, nil)
	descSnapshotAge  = prometheus.NewDesc("shunt_agent_snapshot_age_seconds", "Time since the snapshot in force was received.", nil, nil)
	descPassthrough  = prometheus.NewDesc("shunt_agent_passthrough", "1 when the mesh allows passthrough, 0 under egress lockdown.", nil, nil)
	descReady        = prometheus.NewDesc("shunt_agent_ready", "1 when /readyz answers 200.", nil, nil)
	descCaptureOK    = prometheus.NewDesc("shunt_capture_installed", "1 when the wanted capture rules are installed.", nil, nil)
	descAllowed      = prometheus.NewDesc("shunt_capture_egress_allowed_prefixes", "Destinations allowed under egress lockdown (absent without lockdown).", nil, nil)
	descProxyUp      = prometheus.NewDesc("shunt_proxy_up", "1 while the proxy process shunt runs (--envoy-binary) is running.", nil, nil)
	descProxyRestart = prometheus.NewDesc("shunt_proxy_restarts_total", "Proxy processes started after the first, because the previous one died.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueries, descTruncated, descCacheHits, descCacheMiss, descTCPConns, descPanics,
		descUpQueries, descUpFailures, descUpLatency, descKernelDNS, descTableNames, descXDSConnected, descXDSReconnect, descXDSNACK,
		descSnapshot, descSnapshotAge, descPassthrough, descReady, descCaptureOK, descAllowed, descProxyUp, descProxyRestart} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	count := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	m := a.dns.Metrics().Snapshot()
	for qtype, byOutcome := range m.Queries {
		for outcome, n := range byOutcome {
			count(descQueries, float64(n), qtype, outcome)
		}
	}
	count(descTruncated, float64(m.Truncated))
	count(descCacheHits, float64(m.CacheHits))
	count(descCacheMiss, float64(m.CacheMiss))
	gauge(descTCPConns, float64(m.TCPConns))
	count(descPanics, float64(m.Panics))
	bounds := dnsBounds()
	for _, u := range m.Upstreams {
		up := u.Addr.String()
		count(descUpQueries, float64(u.Queries), up)
		count(descUpFailures, float64(u.Failures), up)
		buckets := make(map[float64]uint64, len(bounds))
		var cum uint64
		for i, b := range bounds {
			cum += u.Buckets[i]
			buckets[b] = cum
		}
		cum += u.Buckets[len(bounds)]
		ch <- prometheus.MustNewConstHistogram(descUpLatency, cum, u.Sum.Seconds(), buckets, up)
	}
	if f := a.opts.KernelDNS; f != nil {
		if st, err := f(); err == nil {
			for _, o := range []struct {
				name string
				n    uint64
			}{{"table", st.Table}, {"cache", st.Cache}, {"missed", st.Missed}, {"too_big", st.TooBig}, {"passed", st.Passed}, {"tracked", st.Tracked}} {
				count(descKernelDNS, float64(o.n), o.name)
			}
		}
	}
	if t := a.dns.Table(); t != nil {
		gauge(descTableNames, float64(t.Len()))
	} else {
		gauge(descTableNames, 0)
	}
	if f := a.opts.SourceStatus; f != nil {
		st := f()
		gauge(descXDSConnected, b2f(st.Connected))
		count(descXDSReconnect, float64(st.Reconnects))
		gauge(descXDSNACK, b2f(st.LastNACK != ""))
	}
	if s := a.snap.Load(); s != nil {
		gauge(descSnapshot, 1, s.Version)
		if !s.ReceivedAt.IsZero() {
			gauge(descSnapshotAge, time.Since(s.ReceivedAt).Seconds())
		}
		gauge(descPassthrough, b2f(s.Passthrough))
	}
	ready, _ := a.Ready()
	gauge(descReady, b2f(ready))
	if p := a.opts.Proxy; p != nil {
		gauge(descProxyUp, b2f(p.Up()))
		count(descProxyRestart, float64(p.Restarts()))
	}
	if a.opts.Engine != nil {
		gauge(descCaptureOK, b2f(a.captureOK.Load()))
		if p := a.plan.Load(); p != nil && p.Egress != nil {
			gauge(descAllowed, float64(len(p.Egress.Allowed)))
		}
	}
}

func dnsBounds() []float64 {
	var out []float64
	for _, d := range dnsproxyBounds() {
		out = append(out, d.Seconds())
	}
	return out
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

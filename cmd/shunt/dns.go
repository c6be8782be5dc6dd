//go:build !lean

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/sockowner"
)

type dnsFlags struct {
	listen           []string
	allowNonLoopback bool
	table            string
	upstreams        []string
	resolvConf       string
	ttl              time.Duration
	cacheSize        int
	serveStale       bool
	unknownNames     string
	upstreamMark     string
	hedgeDelay       time.Duration
	queryTimeout     time.Duration
	reloadInterval   time.Duration
	kernelAnswers    bool
}

func newDNSCommand() *cobra.Command {
	var f dnsFlags
	cmd := &cobra.Command{
		Use:   "dns",
		Short: "Run the DNS interceptor",
		Long: `Run the DNS interceptor: answer the names in the table with their VIPs and
forward every other name to the workload's resolvers (from --resolv-conf or
--upstream), with a cache. Runs until SIGTERM or SIGINT.`,
		Example: `  shunt dns --table /etc/shunt/names.yaml --resolv-conf /etc/shunt/resolv.conf.orig
  shunt dns --upstream 10.96.0.10:53 --unknown-names nxdomain --upstream-mark 0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDNS(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.listen, "listen", nil, "address to serve on, UDP and TCP (repeatable; default 127.0.0.1:15053 and [::1]:15053)")
	fl.BoolVar(&f.allowNonLoopback, "allow-non-loopback", false, "allow --listen on an address that is not loopback")
	fl.StringVar(&f.table, "table", "", "YAML or JSON file of name: [addresses]; reloaded when it changes")
	fl.StringArrayVar(&f.upstreams, "upstream", nil, "upstream resolver IP[:PORT] (repeatable; overrides --resolv-conf's nameservers)")
	fl.StringVar(&f.resolvConf, "resolv-conf", "/etc/resolv.conf", "the workload's original resolv.conf: upstreams and search domains")
	fl.DurationVar(&f.ttl, "ttl", dnsproxy.DefaultTTL, "TTL of table answers")
	fl.IntVar(&f.cacheSize, "cache-size", 10000, "maximum cached forwarded answers (0 disables the cache)")
	fl.BoolVar(&f.serveStale, "serve-stale", false, "answer from expired cache entries when the upstreams have not answered within 1.8 s, at once while they all fail (RFC 8767)")
	fl.StringVar(&f.unknownNames, "unknown-names", "forward", "names not in the table: forward, nxdomain or refused")
	fl.StringVar(&f.upstreamMark, "upstream-mark", fmt.Sprintf("%#x", dnsproxy.DefaultUpstreamMark), "SO_MARK on upstream sockets, exempted by the capture rules (0 disables; needs CAP_NET_ADMIN)")
	fl.DurationVar(&f.hedgeDelay, "hedge-delay", 150*time.Millisecond, "ask the next upstream too when one is silent this long")
	fl.DurationVar(&f.queryTimeout, "query-timeout", 3*time.Second, "give up on a forwarded query after this long (SERVFAIL)")
	fl.DurationVar(&f.reloadInterval, "table-poll", 500*time.Millisecond, "how often to check --table for changes")
	fl.BoolVar(&f.kernelAnswers, "kernel-answers", false, "answer plain A/AAAA queries for table names from a tc program on this network namespace's lo, without waking the interceptor (needs CAP_BPF and CAP_NET_ADMIN; every --listen on loopback and one port; see docs/dns.md)")
	return cmd
}

func dnsConfig(f dnsFlags) (dnsproxy.Config, error) {
	cfg := dnsproxy.Config{AllowNonLoopback: f.allowNonLoopback, HedgeDelay: f.hedgeDelay, QueryTimeout: f.queryTimeout}
	for _, l := range f.listen {
		ap, err := netip.ParseAddrPort(l)
		if err != nil {
			return cfg, fmt.Errorf("--listen %q: want IP:PORT (e.g. 127.0.0.1:15053 or [::1]:15053)", l)
		}
		cfg.Listen = append(cfg.Listen, ap)
	}
	if f.ttl < time.Second || f.ttl > 24*time.Hour {
		return cfg, fmt.Errorf("--ttl %v: must be between 1s and 24h", f.ttl)
	}
	if f.cacheSize < 0 {
		return cfg, fmt.Errorf("--cache-size %d: must not be negative", f.cacheSize)
	}
	if f.hedgeDelay <= 0 {
		return cfg, fmt.Errorf("--hedge-delay %v: must be positive", f.hedgeDelay)
	}
	if f.queryTimeout <= 0 {
		return cfg, fmt.Errorf("--query-timeout %v: must be positive", f.queryTimeout)
	}
	if f.reloadInterval <= 0 {
		return cfg, fmt.Errorf("--table-poll %v: must be positive", f.reloadInterval)
	}
	cfg.Cache = dnsproxy.CacheOptions{Size: f.cacheSize, ServeStale: f.serveStale}
	p, err := dnsproxy.ParseUnknownPolicy(f.unknownNames)
	if err != nil {
		return cfg, fmt.Errorf("--unknown-names: %w", err)
	}
	cfg.UnknownNames = p
	mark, err := strconv.ParseUint(f.upstreamMark, 0, 32)
	if err != nil {
		return cfg, fmt.Errorf("--upstream-mark %q: want a 32-bit number such as 0x5348, or 0 to disable", f.upstreamMark)
	}
	cfg.UpstreamMark = uint32(mark)
	for _, u := range f.upstreams {
		ap, err := netip.ParseAddrPort(u)
		if err != nil {
			a, aerr := netip.ParseAddr(u)
			if aerr != nil {
				return cfg, fmt.Errorf("--upstream %q: want IP or IP:PORT", u)
			}
			ap = netip.AddrPortFrom(a, 53)
		}
		cfg.Upstreams = append(cfg.Upstreams, ap)
	}
	if f.resolvConf != "" {
		b, err := os.ReadFile(f.resolvConf)
		switch {
		case err == nil:
			rc, err := dnsproxy.ParseResolvConf(b)
			if err != nil {
				return cfg, fmt.Errorf("--resolv-conf %s: %w", f.resolvConf, err)
			}
			cfg.Search = rc.Search
			if len(cfg.Upstreams) == 0 {
				cfg.Upstreams = rc.Nameservers
			}
		case errors.Is(err, os.ErrNotExist) && len(f.upstreams) > 0:
			// Upstreams given explicitly; the search list is optional.
		default:
			return cfg, fmt.Errorf("--resolv-conf %s: %w", f.resolvConf, err)
		}
	}
	return cfg, nil
}

func runDNS(ctx context.Context, f dnsFlags) error {
	cfg, err := dnsConfig(f)
	if err != nil {
		return err
	}
	log := slog.Default()
	cfg.Logger = log
	if len(cfg.Upstreams) == 0 && cfg.UnknownNames == dnsproxy.UnknownForward {
		log.Warn("no upstream resolvers: forwarded names will get SERVFAIL", "resolv-conf", f.resolvConf)
	}
	var tw *tableWatcher
	if f.table != "" {
		tw = &tableWatcher{path: f.table, opts: dnsproxy.TableOptions{TTL: f.ttl}, log: log}
		t, err := tw.load()
		if err != nil {
			return fmt.Errorf("--table %s: %w", f.table, err)
		}
		cfg.Table = t
	}
	var ka *kernelAnswers
	if f.kernelAnswers {
		var err error
		if ka, err = loadKernelAnswers(cfg.Listen, log); err != nil {
			return err
		}
		cfg.CacheObserver = ka.a.CacheObserver()
	}
	srv, err := dnsproxy.New(cfg)
	if err != nil {
		if ka != nil {
			ka.a.Close()
		}
		return fmt.Errorf("start DNS interceptor: %w", err)
	}
	set := srv.SetTable
	if ka != nil {
		if err := ka.start(cfg.Table); err != nil {
			return err
		}
		defer ka.stop()
		set = func(t *dnsproxy.Table) {
			srv.SetTable(t)
			ka.sync(t)
		}
	}
	if tw != nil {
		go tw.watch(ctx, f.reloadInterval, set)
	}
	// A port another process holds is an error naming that process.
	return sockowner.Explain(srv.Run(ctx))
}

// tableWatcher reloads the table file when its modification time or size
// changes. A bad file is reported and the last good table stays in force.
type tableWatcher struct {
	path  string
	opts  dnsproxy.TableOptions
	log   *slog.Logger
	mtime time.Time
	size  int64
}

func (w *tableWatcher) load() (*dnsproxy.Table, error) {
	st, err := os.Stat(w.path)
	if err != nil {
		return nil, fmt.Errorf("read table: %w", err)
	}
	w.mtime, w.size = st.ModTime(), st.Size()
	b, err := os.ReadFile(w.path)
	if err != nil {
		return nil, fmt.Errorf("read table: %w", err)
	}
	entries, err := dnsproxy.ParseTableFile(b)
	if err != nil {
		return nil, err
	}
	return dnsproxy.NewTable(entries, w.opts)
}

func (w *tableWatcher) watch(ctx context.Context, every time.Duration, set func(*dnsproxy.Table)) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st, err := os.Stat(w.path)
		if err != nil {
			w.log.Warn("table file unreadable; keeping the last good table", "path", w.path, "err", err)
			continue
		}
		if st.ModTime().Equal(w.mtime) && st.Size() == w.size {
			continue
		}
		start := time.Now()
		t, err := w.load()
		if err != nil {
			w.log.Error("table file rejected; keeping the last good table", "path", w.path, "err", err)
			continue
		}
		set(t)
		w.log.Info("table reloaded", "path", w.path, "names", t.Len(), "took", time.Since(start))
	}
}

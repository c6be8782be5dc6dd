// Command dnsserve runs dnsproxy with the options bench/dns/run.sh uses. The
// benchmark runs `shunt dns` itself; this stands in only when cmd/shunt does
// not build, so that the DNS figures can still be measured (same package,
// same server, without the CLI around it).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/shunt-dev/shunt/dnsproxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:15053", "listen address")
	table := flag.String("table", "", "table file")
	upstream := flag.String("upstream", "", "upstream IP:PORT")
	cacheSize := flag.Int("cache-size", 10000, "cache entries")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	memProfile := flag.String("memprofile", "", "write an allocation profile to this file at exit")
	flag.Parse()
	if *memProfile != "" {
		defer func() {
			if f, err := os.Create(*memProfile); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "dnsserve:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "dnsserve:", err)
			os.Exit(1)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if err := run(*listen, *table, *upstream, *cacheSize); err != nil {
		fmt.Fprintln(os.Stderr, "dnsserve:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(listen, table, upstream string, cacheSize int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := os.ReadFile(table)
	if err != nil {
		return err
	}
	entries, err := dnsproxy.ParseTableFile(b)
	if err != nil {
		return err
	}
	t, err := dnsproxy.NewTable(entries, dnsproxy.TableOptions{})
	if err != nil {
		return err
	}
	l, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", listen, err)
	}
	u, err := netip.ParseAddrPort(upstream)
	if err != nil {
		return fmt.Errorf("-upstream %q: %w", upstream, err)
	}
	srv, err := dnsproxy.New(dnsproxy.Config{Listen: []netip.AddrPort{l}, Table: t, Upstreams: []netip.AddrPort{u},
		Cache: dnsproxy.CacheOptions{Size: cacheSize}, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

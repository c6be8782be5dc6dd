package agent_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/rulewatch"
)

// TestFlushedNatTableIsRestoredAtOnce flushes shunt's rules under a
// running agent whose periodic check is far away (10 s), and measures how
// long the capture stays gone: the whole nat table with the iptables engine,
// the table's chains with the nftables engine. nf_tables announces the
// change and the agent repairs it at once; legacy iptables announces
// nothing, so its rules are read five times a second.
func TestFlushedNatTableIsRestoredAtOnce(t *testing.T) {
	for _, c := range []struct {
		name, engine string
		args         []string
		flush, check []string
		want         []string
		bound        time.Duration // generous: the figures are in the log
	}{
		{"iptables-nft", "iptables", []string{"--iptables-backend", "nft"},
			[]string{"iptables-nft", "-t", "nat", "-F"}, []string{"iptables-nft-save", "-t", "nat"},
			[]string{"-j SHUNT_OUTPUT", "-A SHUNT_OUTBOUND_REDIRECT"}, time.Second},
		{"iptables-legacy", "iptables", []string{"--iptables-backend", "legacy"},
			[]string{"iptables-legacy", "-t", "nat", "-F"}, []string{"iptables-legacy-save", "-t", "nat"},
			[]string{"-j SHUNT_OUTPUT", "-A SHUNT_OUTBOUND_REDIRECT"}, 2 * time.Second},
		{"nftables", "nftables", nil,
			[]string{"nft", "flush", "table", "inet", "shunt"}, []string{"nft", "list", "table", "inet", "shunt"},
			[]string{"redirect to :15001"}, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorldWith(t, c.engine)
			w.writeResource("services.yaml", externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
			w.startAgent("", append(c.args, "--reconcile-interval", "10s")...)
			captured := func() bool {
				out, _ := w.pod.Run(c.check[0], c.check[1:]...)
				for _, want := range c.want {
					if !strings.Contains(out, want) {
						return false
					}
				}
				return true
			}
			if !captured() {
				out, _ := w.pod.Run(c.check[0], c.check[1:]...)
				t.Fatalf("no capture rules in the pod:\n%s", out)
			}
			var worst time.Duration
			for i := 0; i < 5; i++ {
				start := time.Now()
				w.pod.MustRun(c.flush[0], c.flush[1:]...)
				for !captured() {
					if time.Since(start) > 5*time.Second {
						t.Fatalf("flush %d: the rules were not restored within 5s\n%s", i, w.agent.Output())
					}
					time.Sleep(2 * time.Millisecond)
				}
				took := time.Since(start)
				worst = max(worst, took)
				t.Logf("flush %d: rules back after %v", i, took.Round(time.Millisecond))
				time.Sleep(200 * time.Millisecond)
			}
			if worst > c.bound {
				t.Errorf("rules came back after up to %v, want under %v", worst, c.bound)
			}
		})
	}
}

// TestBenchDriftRepair measures the repair gap precisely (SHUNT_BENCH=1):
// the nat table is flushed 50 times and the time to the agent's restoring
// commit is read from nf_tables' own change notifications, with no polling
// in the measurement.
func TestBenchDriftRepair(t *testing.T) {
	if os.Getenv("SHUNT_BENCH") == "" {
		t.Skip("a benchmark: run with SHUNT_BENCH=1")
	}
	w := newWorldWith(t, "iptables")
	w.writeResource("services.yaml", externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
	w.startAgent("", "--iptables-backend", "nft", "--reconcile-interval", "10s")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var changes <-chan struct{}
	if err := w.pod.Do(func() (err error) { changes, err = rulewatch.Watch(ctx); return err }); err != nil {
		t.Fatal(err)
	}
	var gaps []time.Duration
	for i := 0; i < 50; i++ {
		time.Sleep(100 * time.Millisecond)
		for len(changes) > 0 {
			<-changes
		}
		w.pod.MustRun("iptables-nft", "-t", "nat", "-F")
		flushed := time.Now()
		// Each announced commit is checked; the gap ends at the one that
		// holds the rules again.
		for {
			select {
			case <-changes:
			case <-time.After(5 * time.Second):
				t.Fatalf("flush %d: the rules were not restored within 5s", i)
			}
			at := time.Since(flushed)
			if out := w.pod.MustRun("iptables-nft-save", "-t", "nat"); strings.Contains(out, "-j SHUNT_OUTPUT") {
				gaps = append(gaps, at)
				break
			}
		}
	}
	slices.Sort(gaps)
	t.Logf("repair gap over %d flushes (iptables-nft): p50 %v, p90 %v, max %v", len(gaps),
		gaps[len(gaps)/2].Round(time.Millisecond), gaps[len(gaps)*9/10].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond))
}

// Package install_test measures shunt's install and uninstall of the default
// capture plan against a naive installer that adds the same rules one
// go-iptables call at a time, in the same run, in fresh namespaces.
//
//	go test -bench . -benchtime 20x ./bench/install
package install_test

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	goipt "github.com/coreos/go-iptables/iptables"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/iptables"
	"github.com/shunt-dev/shunt/tests/testenv"
)

func defaultPlan(b *testing.B) *redirect.Plan {
	c := redirect.NewConfig()
	_ = c.Set("redirectAllDNS", "true", "bench")
	p, err := c.Plan(redirect.OSHost{})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// naive installs the rules of each family with one iptables call per chain
// and rule, as installers that drive go-iptables rule by rule do.
func naive(nsPath string, p *redirect.Plan, remove bool) error {
	return ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		for _, v6 := range []bool{false, true} {
			proto, path := goipt.ProtocolIPv4, "iptables-nft"
			if v6 {
				proto, path = goipt.ProtocolIPv6, "ip6tables-nft"
			}
			ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(path))
			if err != nil {
				return err
			}
			rs := iptables.Render(p, v6)
			for table, t := range rs.Tables {
				chains := make([]string, 0, len(t.Chains))
				for c := range t.Chains {
					chains = append(chains, c)
				}
				sort.Strings(chains)
				if remove {
					for _, j := range t.Jumps {
						f := strings.Fields(j)
						if err := ipt.Delete(table, f[0], f[1:]...); err != nil {
							return err
						}
					}
					for _, c := range chains {
						if err := ipt.ClearChain(table, c); err != nil {
							return err
						}
					}
					for _, c := range chains {
						if err := ipt.DeleteChain(table, c); err != nil {
							return err
						}
					}
					continue
				}
				for _, c := range chains {
					if err := ipt.NewChain(table, c); err != nil {
						return err
					}
				}
				for _, c := range chains {
					for _, r := range t.Chains[c] {
						if err := ipt.Append(table, c, strings.Fields(r)...); err != nil {
							return err
						}
					}
				}
				for _, j := range t.Jumps {
					f := strings.Fields(j)
					if err := ipt.Append(table, f[0], f[1:]...); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkInstallUninstall installs and then uninstalls the default plan
// (both families, nft backend) with shunt and with the naive installer, in
// fresh namespaces, alternating, and reports the medians of each step and
// shunt's share of the naive time (target: ≤ 0.2, and under 50 ms).
func BenchmarkInstallUninstall(b *testing.B) {
	testenv.RequireBinary(b, "iptables-nft-restore")
	p := defaultPlan(b)
	ctx := context.Background()
	var sIn, sOut, nIn, nOut []time.Duration
	timed := func(acc *[]time.Duration, f func() error) {
		start := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		*acc = append(*acc, time.Since(start))
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		n := testenv.NewNetns(b, "bench")
		m := testenv.NewNetns(b, "naive")
		eng := iptables.New(iptables.Options{NetnsPath: n.Path(), StateDir: b.TempDir(), Backend: "nft"})
		b.StartTimer()
		timed(&sIn, func() error { return eng.Install(ctx, p) })
		timed(&sOut, func() error { return eng.Uninstall(ctx) })
		timed(&nIn, func() error { return naive(m.Path(), p, false) })
		timed(&nOut, func() error { return naive(m.Path(), p, true) })
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(median(sIn)), "shunt-install-ms")
	b.ReportMetric(ms(median(sOut)), "shunt-uninstall-ms")
	b.ReportMetric(ms(median(nIn)), "naive-install-ms")
	b.ReportMetric(ms(median(nOut)), "naive-uninstall-ms")
	b.ReportMetric(float64(median(sIn))/float64(median(nIn)), "install-ratio")
	b.ReportMetric(float64(median(sOut))/float64(median(nOut)), "uninstall-ratio")
	b.Logf("median install: shunt %v, naive %v (ratio %.2f); median uninstall: shunt %v, naive %v (ratio %.2f); targets: ratio ≤ 0.20, shunt < 50ms",
		median(sIn), median(nIn), float64(median(sIn))/float64(median(nIn)),
		median(sOut), median(nOut), float64(median(sOut))/float64(median(nOut)))
}

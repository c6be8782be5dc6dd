// Package agent_bench measures the agent: how fast a resource change
// becomes a DNS answer with 10,000 ExternalServices, and how much memory
// the agent holds with 10,000 and 100,000 names.
//
//	go test ./bench/agent -run XXX -bench . -benchtime 1x -v
package agent_bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/agent"
	"github.com/shunt-dev/shunt/controlplane"
	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/xdsclient"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func dnsConfig() dnsproxy.Config {
	return dnsproxy.Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, UDPSockets: 1}
}

func writeServices(b *testing.B, dir string, n int) {
	var sb strings.Builder
	for i := range n {
		fmt.Fprintf(&sb, "---\ntype: ExternalService\nmesh: default\nname: svc-%d\ntags:\n  kuma.io/service: svc-%d\n  kuma.io/protocol: http\nnetworking:\n  address: svc-%d.example.com:443\n", i, i, i)
	}
	if err := os.WriteFile(filepath.Join(dir, "services.yaml"), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
}

func udpAddr(a *agent.Agent) string {
	for _, x := range a.DNS().Addrs() {
		if x.Network() == "udp" {
			return x.String()
		}
	}
	return ""
}

func resolves(addr, name string) bool {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	in, _, err := c.Exchange(m, addr)
	return err == nil && len(in.Answer) > 0
}

// BenchmarkPropagation10k: the embedded path of `shunt run` (control plane
// on loopback, xDS client, agent) with 10,000 ExternalServices; each round
// adds one resource file and waits for its name to be answered.
func BenchmarkPropagation10k(b *testing.B) {
	dir := b.TempDir()
	writeServices(b, dir, 10000)
	cp, err := controlplane.New(controlplane.Options{ResourcesDir: dir, DisableIPv6: true, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = cp.Serve(ctx, ln) }()
	client, err := xdsclient.New(xdsclient.Config{Server: ln.Addr().String(), NodeID: "bench", Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	a, err := agent.New(agent.Options{Source: client, DNS: dnsConfig(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = a.Run(ctx) }()
	<-a.DNS().Ready()
	addr := udpAddr(a)
	deadline := time.Now().Add(60 * time.Second)
	for !resolves(addr, "svc-9999.mesh") {
		if time.Now().After(deadline) {
			b.Fatal("initial snapshot never applied")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rounds := max(b.N, 10)
	var lat []time.Duration
	b.ResetTimer()
	for i := range rounds {
		name := "probe-" + strconv.Itoa(i)
		start := time.Now()
		doc := fmt.Sprintf("type: ExternalService\nmesh: default\nname: %s\ntags:\n  kuma.io/service: %s\nnetworking:\n  address: %s.example.com:443\n", name, name, name)
		tmp := filepath.Join(dir, ".probe.tmp")
		if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name+".yaml")); err != nil {
			b.Fatal(err)
		}
		for !resolves(addr, name+".mesh") {
			if time.Since(start) > 30*time.Second {
				b.Fatalf("%s never resolved", name)
			}
			time.Sleep(2 * time.Millisecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	b.ReportMetric(float64(p(0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(p(0.9).Milliseconds()), "p90-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
	b.Logf("propagation over %d changes with 10,000 services: p50 %v, p90 %v, max %v", len(lat), p(0.5), p(0.9), lat[len(lat)-1])
}

// staticSource serves one snapshot, as a persisted one would be.
type staticSource struct{ s *mesh.AgentSnapshot }

func (s staticSource) Run(ctx context.Context) error       { <-ctx.Done(); return nil }
func (s staticSource) Current() *mesh.AgentSnapshot        { return s.s }
func (s staticSource) Updates() <-chan *mesh.AgentSnapshot { return nil }

func BenchmarkMemory10k(b *testing.B)  { benchMemory(b, 10000) }
func BenchmarkMemory100k(b *testing.B) { benchMemory(b, 100000) }

// benchMemory applies a snapshot of n names (IPv4 and IPv6 VIPs each) and
// reports the live heap the agent holds and the process's resident size.
func benchMemory(b *testing.B, n int) {
	runtime.GC()
	debug.FreeOSMemory()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	snap := &mesh.AgentSnapshot{Version: "bench", Passthrough: true, Names: make(map[string][]netip.Addr, n)}
	for i := range n {
		v4 := netip.AddrFrom4([4]byte{240, byte(i >> 16), byte(i >> 8), byte(i)})
		v6 := netip.AddrFrom16([16]byte{0xfd, 0x5e, 0x7a, 0x1c, 0x94, 0xb3, 0xff, 0xff, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		snap.Names["svc-"+strconv.Itoa(i)+".example.com"] = []netip.Addr{v4, v6}
	}
	a, err := agent.New(agent.Options{Source: staticSource{snap}, DNS: dnsConfig(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	<-a.DNS().Ready()
	for a.Snapshot() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if !resolves(udpAddr(a), "svc-1.example.com") {
		b.Fatal("name not answered")
	}
	runtime.GC()
	debug.FreeOSMemory()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)
	rss := rssMB()
	b.ReportMetric(heap, "heap-MB")
	b.ReportMetric(rss, "rss-MB")
	b.Logf("%d names: live heap held by the agent %.1f MB, process RSS %.1f MB", n, heap, rss)
	cancel()
	<-done
	runtime.KeepAlive(a)
}

func rssMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

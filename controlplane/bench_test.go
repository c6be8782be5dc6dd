package controlplane

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shunt-dev/shunt/mesh"
)

// scaleFiles writes n ExternalServices, a quarter HTTP with TLS, over 100
// files, as a large installation would keep them.
func scaleFiles(n int) []mesh.File {
	var files []mesh.File
	per := n / 100
	for f := range 100 {
		var b strings.Builder
		for i := f * per; i < (f+1)*per; i++ {
			if b.Len() > 0 {
				b.WriteString("---\n")
			}
			proto, tls := "tcp", "false"
			if i%4 == 0 {
				proto, tls = "http", "true"
			}
			fmt.Fprintf(&b, "type: ExternalService\nmesh: default\nname: svc-%d\ntags:\n  kuma.io/service: svc-%d\n  kuma.io/protocol: %s\nnetworking:\n  address: svc-%d.example.com:443\n  tls:\n    enabled: %s\n", i, i, proto, i, tls)
		}
		files = append(files, mesh.File{Name: fmt.Sprintf("f%d.yaml", f), Data: []byte(b.String())})
	}
	return files
}

// buildSnapshot is the whole path from resources to a node's snapshot:
// parse, validate, allocate VIPs, translate, assemble.
func buildSnapshot(tb testing.TB, files []mesh.File) *cache.Snapshot {
	res, _, err := mesh.Load(files)
	if err != nil {
		tb.Fatal(err)
	}
	alloc, _ := mesh.NewVIPAllocator(mesh.DefaultVIPv4CIDR, mesh.DefaultVIPv6CIDR)
	vips, err := alloc.Allocate(mesh.Hostnames(res), mesh.VIPs{})
	if err != nil {
		tb.Fatal(err)
	}
	out, err := Translate(res.View(mesh.DefaultMesh, ""), vips, DefaultTranslateOptions())
	if err != nil {
		tb.Fatal(err)
	}
	snap, err := cache.NewSnapshot("v", map[resource.Type][]types.Resource{resource.ListenerType: out.Listeners, resource.ClusterType: out.Clusters})
	if err != nil {
		tb.Fatal(err)
	}
	return snap
}

// BenchmarkSnapshot10k reports, besides time per op, the heap that one
// snapshot keeps alive (retained-MB) and the peak heap while building it
// (peak-heap-MB); the targets are under 1 s and under 300 MB.
func BenchmarkSnapshot10k(b *testing.B) {
	files := scaleFiles(10000)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	start := time.Now()
	snap := buildSnapshot(b, files)
	first := time.Since(start)
	runtime.ReadMemStats(&ms)
	peak := ms.HeapAlloc
	runtime.GC()
	runtime.ReadMemStats(&ms)
	retained := ms.HeapAlloc
	if n := len(snap.GetResources(resource.ListenerType)); n != 20002 {
		b.Fatalf("%d listeners", n)
	}
	runtime.KeepAlive(snap)
	b.ResetTimer()
	for b.Loop() {
		buildSnapshot(b, files)
	}
	// After the loop: ResetTimer discards metrics reported before it.
	b.ReportMetric(float64(retained-base)/(1<<20), "retained-MB")
	b.ReportMetric(float64(peak-base)/(1<<20), "peak-heap-MB")
	b.ReportMetric(first.Seconds(), "first-s")
}

// The memory target as a test, so that a regression fails CI rather than
// waiting for someone to read benchmark output. Time is BenchmarkSnapshot10k's
// to measure: on a loaded machine a wall-clock bound would only flake.
func TestSnapshot10kWithinBudget(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("scale test skipped in -short and -race runs")
	}
	files := scaleFiles(10000)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.TotalAlloc
	start := time.Now()
	buildSnapshot(t, files)
	took := time.Since(start)
	runtime.ReadMemStats(&ms)
	allocated := float64(ms.TotalAlloc-base) / (1 << 20)
	t.Logf("10,000 ExternalServices: %v, %.0f MB allocated in total", took, allocated)
	if allocated > 600 {
		t.Errorf("allocated %.0f MB (target under 300 MB live)", allocated)
	}
}

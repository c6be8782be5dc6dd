package dnsproxy

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func bigEntries(n int) map[string][]netip.Addr {
	m := make(map[string][]netip.Addr, n)
	for i := 0; i < n; i++ {
		v4 := netip.AddrFrom4([4]byte{240, byte(i >> 16), byte(i >> 8), byte(i)})
		v6 := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)})
		m[fmt.Sprintf("service-%d.namespace-%d.mesh", i, i%100)] = []netip.Addr{v4, v6}
	}
	return m
}

// BenchmarkTableLoad100k measures building and swapping in a table of
// 100,000 names (each with an IPv4 and an IPv6 VIP), and the heap it holds.
func BenchmarkTableLoad100k(b *testing.B) {
	entries := bigEntries(100_000)
	s, err := New(Config{Logger: quiet(), Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}})
	if err != nil {
		b.Fatal(err)
	}
	var before, after runtime.MemStats
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.SetTable(nil)
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		t, err := NewTable(entries, TableOptions{})
		if err != nil {
			b.Fatal(err)
		}
		s.SetTable(t)
		total += time.Since(start)
		runtime.GC()
		runtime.ReadMemStats(&after)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/load")
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MB-heap")
}

// BenchmarkTableAnswer is the hot path: a UDP A query for a table name
// answered from the wire. It must not allocate.
func BenchmarkTableAnswer(b *testing.B) {
	t := MustTable(bigEntries(100_000), TableOptions{})
	s, err := New(Config{Logger: quiet(), Table: t, Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}})
	if err != nil {
		b.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("Service-4242.namespace-42.mesh.", dns.TypeA)
	m.SetEdns0(1232, false)
	req, _ := m.Pack()
	out := make([]byte, 0, 2048)
	var nb [256]byte
	var q query
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := s.fast(req, out[:0], &nb, &q, true); !ok {
			b.Fatal("not answered from the table")
		}
	}
}

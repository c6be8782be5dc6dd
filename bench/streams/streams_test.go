// Package streams_bench floods the agent's xDS socket with 20,000 ADS
// streams while a client keeps asking the agent's DNS for a mesh name, and
// reports the agent's peak memory and the DNS latency during the flood.
//
//	go test ./bench/streams -run XXX -bench . -benchtime 1x -v
//
// TestStreamFloodBounded checks the memory bound (no timing) and that DNS
// kept answering; it needs root (a network namespace for the agent).
package streams_bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/miekg/dns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	floodStreams = 20000
	maxRSSMB     = 150
)

type result struct {
	baseRSSMB, peakRSSMB float64
	p50, p99             time.Duration
	queries, failed      int
	streamsOpened        int64
	logLines             int
}

// flood runs the agent, floods its socket and measures.
func flood(t testing.TB) result {
	testenv.RequireRoot(t)
	dir := testenv.ReadableTempDir(t)
	shunt := filepath.Join(dir, "shunt")
	if err := testenv.BuildShunt(shunt); err != nil {
		t.Fatal(err)
	}
	res := filepath.Join(dir, "res")
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(res, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(res, "httpbin.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	n := testenv.NewNetns(t, "flood")
	resolv := n.WriteResolvConf("nameserver 127.0.0.1\n")
	agent := n.Start(n.Command(context.Background(), shunt, "run", "--no-capture", "--resources", res, "--state-dir", state,
		"--node-id", "pod", "--admin", "off", "--resolv-conf", resolv))
	sock := filepath.Join(state, "xds.sock")
	deadline := time.Now().Add(15 * time.Second)
	for !answers(n, "httpbin.mesh.") {
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not answer httpbin.mesh:\n%s", agent.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	pid := agent.Cmd.Process.Pid
	var r result
	linesBefore := strings.Count(agent.Output(), "\n")
	r.baseRSSMB = rssMB(t, pid, "VmRSS")

	// DNS keeps being asked throughout.
	stopDNS := make(chan struct{})
	var lat []time.Duration
	var dnsWG sync.WaitGroup
	dnsWG.Add(1)
	go func() {
		defer dnsWG.Done()
		_ = n.Do(func() error {
			c := &dns.Client{Timeout: time.Second}
			m := new(dns.Msg)
			m.SetQuestion("httpbin.mesh.", dns.TypeA)
			for {
				select {
				case <-stopDNS:
					return nil
				default:
				}
				start := time.Now()
				in, _, err := c.Exchange(m, "127.0.0.1:15053")
				r.queries++
				if err != nil || len(in.Answer) == 0 {
					r.failed++
					continue
				}
				lat = append(lat, time.Since(start))
				time.Sleep(2 * time.Millisecond)
			}
		})
	}()

	// 20,000 streams held open at once, over 200 connections, half of
	// them as this node, half as nodes the socket does not serve.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	const conns = 200
	for i := range conns {
		cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ads := discovery.NewAggregatedDiscoveryServiceClient(cc)
		for j := range floodStreams / conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
				defer scancel()
				st, err := ads.StreamAggregatedResources(sctx)
				if err != nil {
					return
				}
				id := "pod"
				if j%2 == 1 {
					id = "other-" + strconv.Itoa(i)
				}
				if st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, Node: &core.Node{Id: id}}) != nil {
					return
				}
				atomic.AddInt64(&r.streamsOpened, 1)
				for {
					if _, err := st.Recv(); err != nil {
						return
					}
				}
			}()
		}
	}
	peak := 0.0
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		peak = max(peak, rssMB(t, pid, "VmRSS"))
	}
	cancel()
	wg.Wait()
	close(stopDNS)
	dnsWG.Wait()
	r.peakRSSMB = max(peak, rssMB(t, pid, "VmHWM"))
	r.logLines = strings.Count(agent.Output(), "\n") - linesBefore
	if agent.Exited() {
		t.Fatalf("the agent died during the flood:\n%s", agent.Output())
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r
}

func answers(n *testenv.Netns, name string) bool {
	ok := false
	_ = n.Do(func() error {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		in, _, err := (&dns.Client{Timeout: 500 * time.Millisecond}).Exchange(m, "127.0.0.1:15053")
		ok = err == nil && len(in.Answer) > 0
		return nil
	})
	return ok
}

// rssMB reads a memory figure (VmRSS, VmHWM) of pid in MB.
func rssMB(t testing.TB, pid int, field string) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			return float64(kb) / 1024
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

func TestStreamFloodBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("a 10 s flood")
	}
	r := flood(t)
	t.Logf("RSS %.0f MB before, %.0f MB peak; DNS p50 %v p99 %v over %d queries (%d failed); %d streams opened; %d log lines",
		r.baseRSSMB, r.peakRSSMB, r.p50, r.p99, r.queries, r.failed, r.streamsOpened, r.logLines)
	// Ten a second for streams coming and going, one a second per kind
	// of refusal, over the 10 s flood: far below one per stream.
	if r.logLines > 400 {
		t.Errorf("the agent wrote %d log lines during the flood, want them rate-limited", r.logLines)
	}
	if r.peakRSSMB >= maxRSSMB {
		t.Errorf("agent peak RSS %.0f MB under %d streams, want < %d MB", r.peakRSSMB, floodStreams, maxRSSMB)
	}
	if r.queries == 0 || r.failed*100 > r.queries {
		t.Errorf("DNS during the flood: %d of %d queries failed", r.failed, r.queries)
	}
}

func BenchmarkStreamFlood(b *testing.B) {
	for range b.N {
		r := flood(b)
		b.ReportMetric(r.peakRSSMB, "peak_rss_MB")
		b.ReportMetric(float64(r.p99.Microseconds())/1000, "dns_p99_ms")
		b.ReportMetric(float64(r.p50.Microseconds())/1000, "dns_p50_ms")
		b.ReportMetric(float64(r.failed), "dns_failed")
		b.ReportMetric(float64(r.logLines), "log_lines")
	}
}

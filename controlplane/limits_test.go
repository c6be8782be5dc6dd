package controlplane

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// A peer opening stream after stream is refused past its share, and every
// peer past the total; a closed stream frees its slot.
func TestStreamBounds(t *testing.T) {
	for _, tc := range []struct {
		name           string
		total, perPeer int
		open           int
		want           string
	}{
		{"per peer", 100, 4, 4, "at most 4 streams per peer"},
		{"in total", 3, 64, 3, "at most 3 streams"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b, _ := os.ReadFile("../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml")
			if err := os.WriteFile(filepath.Join(dir, "httpbin.yaml"), b, 0o644); err != nil {
				t.Fatal(err)
			}
			srv, err := New(Options{ResourcesDir: dir, MaxStreams: tc.total, MaxStreamsPerPeer: tc.perPeer, Logger: quietLog()})
			if err != nil {
				t.Fatal(err)
			}
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, lis) }()
			t.Cleanup(func() { cancel(); <-done })
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
			open := func(i int) (context.CancelFunc, error) {
				sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
				st, err := ads.StreamAggregatedResources(sctx)
				if err == nil {
					// A refused stream's status comes with Recv,
					// whatever Send said.
					_ = st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, Node: &core.Node{Id: "n" + string(rune('a'+i))}})
					_, err = st.Recv()
				}
				return scancel, err
			}
			var cancels []context.CancelFunc
			for i := range tc.open {
				c, err := open(i)
				if err != nil {
					t.Fatalf("stream %d within the bound: %v", i, err)
				}
				cancels = append(cancels, c)
			}
			c, err := open(tc.open)
			c()
			if err == nil || !strings.Contains(err.Error(), "ResourceExhausted") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("stream past the bound: %v, want ResourceExhausted %q", err, tc.want)
			}
			cancels[0]()
			deadline := time.Now().Add(5 * time.Second)
			for {
				c, err := open(tc.open + 1)
				c()
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("a closed stream did not free its slot: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			for _, c := range cancels[1:] {
				c()
			}
		})
	}
}

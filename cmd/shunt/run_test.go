//go:build !lean

package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/xdsclient"
)

// The embedded control plane gives the proxy its outbound listener on the
// port the capture sends traffic to, not a fixed 15001.
func TestEmbeddedControlPlaneTakesThePlansPorts(t *testing.T) {
	res := t.TempDir()
	b, err := os.ReadFile("../../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(res, "httpbin.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dial, err := startEmbeddedControlPlane(ctx, runFlags{resources: res, dnsTTL: 30 * time.Second}, &redirect.Plan{OutboundPort: 15101}, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	st, err := xdsclient.OpenStream(ctx, xdsclient.Config{Server: "embedded", Dialer: dial})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, Node: &core.Node{Id: "n"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var ports []uint32
	for _, a := range resp.GetResources() {
		var l listener.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		if sa := l.GetAddress().GetSocketAddress(); sa.GetProtocol() == core.SocketAddress_TCP && l.GetUseOriginalDst().GetValue() {
			ports = append(ports, sa.GetPortValue())
		}
	}
	if len(ports) != 1 || ports[0] != 15101 {
		t.Errorf("outbound listener ports = %v, want [15101] (the plan's --outbound-port)", ports)
	}
}

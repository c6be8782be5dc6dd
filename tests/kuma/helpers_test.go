package kuma_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/nodemeta"
	"github.com/shunt-dev/shunt/tests/kumacp"
	"github.com/shunt-dev/shunt/tests/peers"
	"github.com/shunt-dev/shunt/xdsclient"
)

// The seed's resources: the mesh, and httpbin.org as an ExternalService.
func seedMesh(passthrough bool) map[string]any {
	return map[string]any{"type": "Mesh", "name": "default", "networking": map[string]any{
		"outbound": map[string]any{"passthrough": passthrough},
	}}
}

func externalService(name, address string) map[string]any {
	return map[string]any{"type": "ExternalService", "mesh": "default", "name": name,
		"tags":       map[string]any{"kuma.io/service": name, "kuma.io/protocol": "http"},
		"networking": map[string]any{"address": address, "tls": map[string]any{"enabled": true}},
	}
}

const dataplaneYAML = `type: Dataplane
mesh: default
name: %s
networking:
  address: 127.0.0.1
  inbound:
  - port: 8080
    servicePort: 8081
    tags:
      kuma.io/service: app
      kuma.io/protocol: http
`

// dataplane is the Dataplane shunt registers as name.
func dataplane(t testing.TB, name string) *nodemeta.Dataplane {
	t.Helper()
	dp, err := nodemeta.ParseDataplane(fmt.Appendf(nil, dataplaneYAML, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.SetTransparentProxy(15006, 15001, true); err != nil {
		t.Fatal(err)
	}
	return dp
}

func buildMeta(t testing.TB, features []string, dp *nodemeta.Dataplane) *nodemeta.Options {
	t.Helper()
	return &nodemeta.Options{Flavor: nodemeta.Kuma, Kuma: nodemeta.KumaOptions{
		DNSPort: 15053, Features: features, Dataplane: dp, IPv6Enabled: true,
	}}
}

func record(t testing.TB, cp *kumacp.CP, o nodemeta.Options, token string) *peers.Recording {
	t.Helper()
	md, err := nodemeta.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := xdsclient.TLSConfig(cp.CAFile(), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rec, err := peers.Record(ctx, cp.Dial, kumacp.XDSAddr, peers.RecordOptions{NodeID: o.Kuma.Dataplane.NodeID(), Metadata: md, TLS: tlsCfg, Token: token})
	if err != nil {
		t.Fatalf("record: %v\nkuma-cp log:\n%s", err, cp.Log())
	}
	return rec
}

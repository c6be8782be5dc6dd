package kuma_test

import (
	"fmt"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/shunt-dev/shunt/controlplane"
	"github.com/shunt-dev/shunt/controlplane/meshca"
	"github.com/shunt-dev/shunt/tests/kumacp"
	"github.com/shunt-dev/shunt/tests/peers"
)

// kuma-cp itself gives a sidecar of a mesh with mTLS and zone egress a
// cluster for an ExternalService whose SNI is the form shunt's control
// plane emits (controlplane.EgressSNI), and the ZoneEgress's filter chains
// match on: the proof that shunt's sidecars and egresses speak Kuma's
// ZoneEgress protocol.
func TestKumaEgressSNI(t *testing.T) {
	cp := kumacp.Start(t, kumacp.Options{})
	cp.Put("/meshes/default", map[string]any{"type": "Mesh", "name": "default",
		"networking": map[string]any{"outbound": map[string]any{"passthrough": false}},
		"routing":    map[string]any{"zoneEgress": true},
		"mtls":       map[string]any{"enabledBackend": "ca-1", "backends": []any{map[string]any{"name": "ca-1", "type": "builtin"}}},
	})
	cp.Put("/zoneegresses/zoneegress-1", map[string]any{"type": "ZoneEgress", "name": "zoneegress-1",
		"networking": map[string]any{"address": "192.0.2.10", "port": 10002}})
	cp.Put("/meshes/default/external-services/example", map[string]any{"type": "ExternalService", "mesh": "default", "name": "example",
		"tags":       map[string]any{"kuma.io/service": "example", "kuma.io/protocol": "tcp"},
		"networking": map[string]any{"address": "example.com:443"},
	})
	rec := record(t, cp, *buildMeta(t, []string{}, dataplane(t, "dp-egress")), "")
	var snis []string
	for _, a := range rec.Clusters.GetResources() {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		if c.GetName() != "example" {
			continue
		}
		var u tlsv3.UpstreamTlsContext
		if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&u); err != nil {
			t.Fatalf("kuma-cp's cluster example has no UpstreamTlsContext: %v\n%v", err, &c)
		}
		snis = append(snis, u.GetSni())
		// The egress is verified by Kuma's egress identity, and the
		// connection offers Kuma's ALPN, as shunt's sidecars do.
		common := u.GetCommonTlsContext()
		var sans []string
		for _, m := range common.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
			sans = append(sans, m.GetSanType().String()+":"+m.GetMatcher().GetExact())
		}
		if want := []string{"URI:" + meshca.SPIFFEID("default", controlplane.EgressIdentityService)}; !slices.Equal(sans, want) {
			t.Errorf("kuma-cp verifies the egress by %v, shunt by %v", sans, want)
		}
		if !slices.Equal(common.GetAlpnProtocols(), []string{controlplane.MeshALPN}) {
			t.Errorf("kuma-cp's ALPN %v, shunt's %v", common.GetAlpnProtocols(), controlplane.MeshALPN)
		}
		for _, sc := range []string{common.GetTlsCertificateSdsSecretConfigs()[0].GetName(), common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName()} {
			if sc != controlplane.IdentitySecretName("default") && sc != controlplane.MeshCASecretName("default") {
				t.Errorf("kuma-cp's secret %q is none of shunt's names", sc)
			}
		}
	}
	want := controlplane.EgressSNI("default", "example")
	if !slices.Contains(snis, want) {
		t.Fatalf("kuma-cp's SNI for example is %q, shunt's %q\nclusters: %v", snis, want, peers.ResourceNames(rec.Clusters))
	}
	// And its endpoints are the ZoneEgress, as shunt's are.
	var eps []string
	for _, a := range rec.Endpoints.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		if cla.GetClusterName() != "example" {
			continue
		}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				eps = append(eps, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
			}
		}
	}
	if !slices.Equal(eps, []string{"192.0.2.10:10002"}) {
		t.Errorf("kuma-cp's endpoints for example are %v, want the ZoneEgress 192.0.2.10:10002", eps)
	}
	t.Logf("kuma-cp: cluster example, SNI %q, endpoints %v", snis, eps)
}

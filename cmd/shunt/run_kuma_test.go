//go:build !lean

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/envoy/bootstrap"
)

// Envoy's bootstrap carries the node exactly as the agent sends it to
// kuma-cp: id from the Dataplane, kuma-dp's typed metadata, the config
// file's and the flags' extras, the raw token.
func TestKumaNodeInEnvoyBootstrap(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	files := map[string]string{
		"token":      "dp-token\n",
		"dp.yaml":    "type: Dataplane\nmesh: default\nname: dp-1\nnetworking:\n  address: 10.0.0.5\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: app}\n",
		"shunt.yaml": "xdsNodeMetadata:\n  team: payments\n  limits: {cpu: 2}\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("SHUNT_CONFIG", "shunt.yaml")
	out, err := runShunt(t, "envoy-bootstrap", "--xds", "kuma-cp.example:5678", "--xds-ca", "ca.pem",
		"--xds-token-file", "token", "--dataplane-file", "dp.yaml", "--xds-node-metadata", "owner=ops", "--xds-node-metadata", "features:=[]")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	b, err := bootstrap.Parse([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	n := b.GetNode()
	md := n.GetMetadata().GetFields()
	if n.GetId() != "default.dp-1" {
		t.Errorf("node id %q, want default.dp-1", n.GetId())
	}
	if md["dataplane.dns.port"].GetStringValue() != "15053" || md["version"].GetStructValue() == nil ||
		md["team"].GetStringValue() != "payments" || md["limits"].GetStructValue().GetFields()["cpu"].GetNumberValue() != 2 ||
		md["owner"].GetStringValue() != "ops" || md["features"].GetListValue() == nil || len(md["features"].GetListValue().GetValues()) != 0 {
		t.Errorf("metadata %v", n.GetMetadata())
	}
	if res := md["dataplane.resource"].GetStringValue(); !strings.Contains(res, `"redirectPortOutbound":15001`) {
		t.Errorf("dataplane.resource %s", res)
	}
	if h := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata(); len(h) != 1 || h[0].GetValue() != "dp-token" {
		t.Errorf("authorization %v, want the raw token", h)
	}

	// A node id that contradicts the Dataplane is refused, naming both.
	_, err = runShunt(t, "envoy-bootstrap", "--xds", "kuma-cp.example:5678", "--dataplane-file", "dp.yaml", "--node-id", "default.other")
	if err == nil || !strings.Contains(err.Error(), `--node-id "default.other"`) || !strings.Contains(err.Error(), `"default.dp-1"`) {
		t.Errorf("contradicting node id: %v", err)
	}
}

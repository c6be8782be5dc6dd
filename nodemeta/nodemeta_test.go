package nodemeta

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

const dpYAML = `type: Dataplane
mesh: payments
name: vm-1
networking:
  address: 10.0.0.5
  inbound:
  - port: 8080
    tags:
      kuma.io/service: app
`

// The Kuma flavour sends what kuma-dp sends, typed as kuma-cp reads it.
func TestKumaMetadata(t *testing.T) {
	dp, err := ParseDataplane([]byte(dpYAML))
	if err != nil {
		t.Fatal(err)
	}
	if dp.NodeID() != "payments.vm-1" {
		t.Errorf("NodeID = %q", dp.NodeID())
	}
	if err := dp.SetTransparentProxy(15006, 15001, true); err != nil {
		t.Fatal(err)
	}
	md, err := Build(Options{Flavor: Kuma, Kuma: KumaOptions{DNSPort: 15053, Dataplane: dp, IPv6Enabled: true},
		Extra: map[string]*structpb.Value{"team": structpb.NewStringValue("a")}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := protojson.Marshal(md)
	var m map[string]any
	if err := json.Unmarshal(got, &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"dataplane.dns.port":               "15053",
		"dataplane.admin.port":             "9901",
		"dataplane.readinessReporter.port": "9902",
		"ipv6Enabled":                      true,
		"team":                             "a",
	} {
		if m[k] != want {
			t.Errorf("%s = %#v, want %#v", k, m[k], want)
		}
	}
	if f, _ := m["features"].([]any); len(f) != 1 || f[0] != "feature-embedded-dns" {
		t.Errorf("features = %#v, want [feature-embedded-dns]", m["features"])
	}
	v, _ := m["version"].(map[string]any)
	if v["kumaDp"].(map[string]any)["version"] != DefaultKumaDPVersion || v["envoy"].(map[string]any)["version"] != DefaultEnvoyVersion {
		t.Errorf("version = %#v", m["version"])
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(m["dataplane.resource"].(string)), &res); err != nil {
		t.Fatalf("dataplane.resource: %v", err)
	}
	tp := res["networking"].(map[string]any)["transparentProxying"].(map[string]any)
	if tp["redirectPortInbound"] != 15006.0 || tp["redirectPortOutbound"] != 15001.0 || tp["ipFamilyMode"] != "DualStack" {
		t.Errorf("transparentProxying = %#v", tp)
	}
	if res["mesh"] != "payments" || res["name"] != "vm-1" {
		t.Errorf("resource = %#v", res)
	}
	if _, ok := m["kuma.io/mesh"]; ok {
		t.Error("kuma.io/mesh sent to kuma-cp, which ignores it")
	}
}

func TestGenericAndIstioMetadata(t *testing.T) {
	md, err := Build(Options{Flavor: Generic, Mesh: "default"})
	if err != nil || md.GetFields()["kuma.io/mesh"].GetStringValue() != "default" {
		t.Errorf("generic = %v, %v", md, err)
	}
	md, err = Build(Options{Flavor: Istio, Istio: IstioOptions{DNSCapture: true, AutoAllocate: true}})
	if err != nil || md.GetFields()["DNS_CAPTURE"].GetStringValue() != "true" || md.GetFields()["DNS_AUTO_ALLOCATE"].GetStringValue() != "true" {
		t.Errorf("istio = %v, %v", md, err)
	}
}

func TestDetect(t *testing.T) {
	for _, tt := range []struct {
		id, mesh string
		dp       bool
		want     Flavor
	}{
		{"vm-1", "default", true, Kuma},
		{"default.dp-1", "default", false, Kuma},
		{"db.example.com", "default", false, Generic},
		{"sidecar~10.0.0.1~app.default~default.svc.cluster.local", "default", false, Istio},
		{"vm-1", "default", false, Generic},
	} {
		if got := Detect(tt.id, tt.mesh, tt.dp); got != tt.want {
			t.Errorf("Detect(%q, %q, %v) = %s, want %s", tt.id, tt.mesh, tt.dp, got, tt.want)
		}
	}
}

func TestParseAssignment(t *testing.T) {
	k, v, err := ParseAssignment("features:=[\"a\",\"b\"]")
	if err != nil || k != "features" || len(v.GetListValue().GetValues()) != 2 {
		t.Errorf("list: %q %v %v", k, v, err)
	}
	k, v, err = ParseAssignment("dataplane.dns.port=15053")
	if err != nil || k != "dataplane.dns.port" || v.GetStringValue() != "15053" {
		t.Errorf("string: %q %v %v", k, v, err)
	}
	k, v, err = ParseAssignment("ipv6Enabled:=false")
	if err != nil || k != "ipv6Enabled" || v.GetKind() == nil || v.GetBoolValue() {
		t.Errorf("bool: %q %v %v", k, v, err)
	}
	for _, bad := range []string{"novalue", "=x", ":=1", "k:=[oops"} {
		if _, _, err := ParseAssignment(bad); err == nil {
			t.Errorf("ParseAssignment(%q) succeeded", bad)
		}
	}
}

// Every bad input names the field and the value.
func TestErrorsNameTheField(t *testing.T) {
	for _, tt := range []struct {
		doc, want string
	}{
		{"type: Mesh\nname: x\nnetworking: {}\n", `type "Mesh"`},
		{"type: Dataplane\nnetworking: {}\n", `name "<nil>"`},
		{"type: Dataplane\nname: a\nmesh: a.b\nnetworking: {}\n", `mesh "a.b"`},
		{"type: Dataplane\nname: a\n", "networking"},
	} {
		_, err := ParseDataplane([]byte(tt.doc))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseDataplane(%q) = %v, want an error naming %s", tt.doc, err, tt.want)
		}
	}
	dp, err := ParseDataplane([]byte(dpYAML + "  transparentProxying:\n    redirectPortOutbound: 16001\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.SetTransparentProxy(15006, 15001, false); err == nil || !strings.Contains(err.Error(), "redirectPortOutbound is 16001 but the capture uses 15001") {
		t.Errorf("conflicting port: %v", err)
	}
	if _, err := Build(Options{Flavor: Kuma}); err == nil || !strings.Contains(err.Error(), "DNS port is 0") {
		t.Errorf("no DNS port: %v", err)
	}
}

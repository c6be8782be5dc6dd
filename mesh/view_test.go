package mesh

import (
	"fmt"
	"strings"
	"testing"
)

func routeNames(v View) []string {
	var out []string
	for _, r := range v.Routes {
		name := r.Hostname
		if name == "" {
			name = r.IP.String()
		}
		var targets []string
		for _, t := range r.Targets {
			targets = append(targets, t.Name)
		}
		out = append(out, fmt.Sprintf("%s:%d->%s", name, r.Port, strings.Join(targets, "+")))
	}
	return out
}

func TestZonePinnedView(t *testing.T) {
	res, _ := loadDir(t, "../controlplane/testdata/zones/universal")
	cases := []struct {
		zone string
		want string
	}{
		{"zone-1", "httpbin.mesh:80->httpbin-for-zone-1 zone-1.httpbin.org:80->httpbin-for-zone-1"},
		{"zone-2", "httpbin.mesh:80->httpbin-for-zone-2 zone-2.httpbin.org:80->httpbin-for-zone-2"},
		{"zone-3", ""},
		{"", ""},
	}
	for _, c := range cases {
		if got := strings.Join(routeNames(res.View("default", c.zone)), " "); got != c.want {
			t.Errorf("zone %q: %s, want %s", c.zone, got, c.want)
		}
	}
	// Without locality awareness every zone sees both, shared under httpbin.mesh.
	m := res.Meshes["default"]
	m.LocalityAware = false
	res.Meshes["default"] = m
	want := "httpbin.mesh:80->httpbin-for-zone-1+httpbin-for-zone-2 zone-1.httpbin.org:80->httpbin-for-zone-1 zone-2.httpbin.org:80->httpbin-for-zone-2"
	if got := strings.Join(routeNames(res.View("default", "zone-1")), " "); got != want {
		t.Errorf("locality off: %s", got)
	}
}

func TestEgressView(t *testing.T) {
	res, _ := loadDir(t, "../controlplane/testdata/egress/universal")
	v := res.View("default", "zone-1")
	if v.Mesh.Passthrough || !v.Mesh.ZoneEgress || len(v.Egresses) != 1 || v.Egresses[0].Address != "192.0.2.10" || v.Egresses[0].Port != 10002 {
		t.Errorf("egress view: %+v", v)
	}
	v = res.View("default", "zone-9")
	if len(v.Egresses) != 0 || len(v.Warnings) == 0 {
		t.Errorf("zone without egress must have none and a warning: %+v", v)
	}
	if v := res.View("other-mesh", "zone-1"); len(v.Routes) != 0 {
		t.Errorf("another mesh sees %v", routeNames(v))
	}
}

func TestRouteConflicts(t *testing.T) {
	docs := `type: ExternalService
name: a
tags:
  kuma.io/service: a
networking:
  address: same.example:443
---
type: ExternalService
name: b
tags:
  kuma.io/service: b
networking:
  address: same.example:443
---
type: ExternalService
name: c
tags:
  kuma.io/service: c
  kuma.io/protocol: http
networking:
  address: 192.0.2.7:8080
`
	res, _, err := Load([]File{{Name: "c.yaml", Data: []byte(docs)}})
	if err != nil {
		t.Fatal(err)
	}
	v := res.View("default", "")
	got := strings.Join(routeNames(v), " ")
	want := "a.mesh:80->a b.mesh:80->b c.mesh:80->c same.example:443->a 192.0.2.7:8080->c"
	if got != want {
		t.Errorf("routes %s\nwant   %s", got, want)
	}
	if len(v.Warnings) != 1 || !strings.Contains(v.Warnings[0].Message, "only through b.mesh") {
		t.Errorf("warnings: %v", v.Warnings)
	}
	if h := Hostnames(res); strings.Join(h, ",") != "a.mesh,b.mesh,c.mesh,same.example" {
		t.Errorf("hostnames %v", h)
	}
}

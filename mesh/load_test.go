package mesh

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func loadDir(t *testing.T, dir string) (*Resources, []Warning) {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fixtures in %s: %v", dir, err)
	}
	var files []File
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, File{Name: filepath.Base(p), Data: b})
	}
	res, warns, err := Load(files)
	if err != nil {
		t.Fatalf("load %s: %v", dir, err)
	}
	return res, warns
}

// The page's examples must load in both forms and mean the same thing.
func TestFixturesBothFormsAgree(t *testing.T) {
	for _, c := range []string{"httpbin", "zones", "egress", "tcp"} {
		t.Run(c, func(t *testing.T) {
			base := filepath.Join("..", "controlplane", "testdata", c)
			uni, _ := loadDir(t, filepath.Join(base, "universal"))
			kube, _ := loadDir(t, filepath.Join(base, "kubernetes"))
			clearOrigins(uni)
			clearOrigins(kube)
			if !reflect.DeepEqual(uni, kube) {
				t.Errorf("Universal and Kubernetes forms differ:\n%+v\n%+v", uni, kube)
			}
		})
	}
}

func clearOrigins(r *Resources) {
	for i := range r.ExternalServices {
		r.ExternalServices[i].Origin = Origin{}
	}
	for i := range r.ZoneEgresses {
		r.ZoneEgresses[i].Origin = Origin{}
	}
	for i := range r.Secrets {
		r.Secrets[i].Origin = Origin{}
	}
	for k, m := range r.Meshes {
		m.Origin = Origin{}
		r.Meshes[k] = m
	}
}

func TestHTTPBinExample(t *testing.T) {
	res, warns := loadDir(t, "../controlplane/testdata/httpbin/universal")
	if len(warns) != 0 {
		t.Errorf("warnings: %v", warns)
	}
	if len(res.ExternalServices) != 1 {
		t.Fatalf("got %d external services", len(res.ExternalServices))
	}
	es := res.ExternalServices[0]
	if es.Service != "httpbin" || es.Protocol != ProtocolHTTP || es.Address.Host != "httpbin.org" || es.Address.Port != 443 {
		t.Errorf("unexpected service: %+v", es)
	}
	if es.TLS == nil || es.TLS.SNI != "httpbin.org" || len(es.TLS.CACert) == 0 || len(es.TLS.ClientCert) == 0 || len(es.TLS.ClientKey) == 0 {
		t.Errorf("TLS not resolved: %+v", es.TLS)
	}
	if !res.Mesh("default").Passthrough {
		t.Error("a mesh without a Mesh resource must default to passthrough")
	}
}

func TestSNIAndDefaults(t *testing.T) {
	pki := newTestPKI(t)
	_ = pki
	cases := []struct {
		name, tls, addr string
		want            *TLS
	}{
		{"default SNI is the host", "enabled: true", "api.example.com:443", &TLS{SNI: "api.example.com"}},
		{"empty sni disables SNI", "enabled: true\n    sni: \"\"", "api.example.com:443", &TLS{}},
		{"serverName is accepted", "enabled: true\n    serverName: other.example.com", "api.example.com:443", &TLS{SNI: "other.example.com"}},
		{"no default SNI for an IP", "enabled: true", "192.0.2.1:443", &TLS{}},
		{"disabled TLS", "enabled: false", "api.example.com:443", nil},
		{"renegotiation", "enabled: true\n    allowRenegotiation: true", "api.example.com:443", &TLS{SNI: "api.example.com", AllowRenegotiation: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := "type: ExternalService\nname: x\ntags:\n  kuma.io/service: x\nnetworking:\n  address: " + c.addr + "\n  tls:\n    " + c.tls + "\n"
			res, _, err := Load([]File{{Name: "x.yaml", Data: []byte(doc)}})
			if err != nil {
				t.Fatal(err)
			}
			if got := res.ExternalServices[0].TLS; !reflect.DeepEqual(got, c.want) {
				t.Errorf("TLS = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestDataSources(t *testing.T) {
	pki := newTestPKI(t)
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	doc := `type: ExternalService
name: x
tags:
  kuma.io/service: x
networking:
  address: x.example:443
  tls:
    enabled: true
    caCert:
      inlineString: |
` + indent(string(pki.ca), "        ") + `
    clientCert:
      inline: ` + b64(pki.cert) + `
    clientKey:
      secret: key
---
type: Secret
name: key
data: ` + b64(pki.key) + "\n"
	res, _, err := Load([]File{{Name: "x.yaml", Data: []byte(doc)}})
	if err != nil {
		t.Fatal(err)
	}
	got := res.ExternalServices[0].TLS
	if strings.TrimSpace(string(got.CACert)) != strings.TrimSpace(string(pki.ca)) || string(got.ClientCert) != string(pki.cert) || string(got.ClientKey) != string(pki.key) {
		t.Errorf("sources not decoded: %+v", got)
	}
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n")
}

// Every refusal must point at the file, the document, the field and the
// value, so the table checks all four.
func TestValidationErrors(t *testing.T) {
	pki := newTestPKI(t)
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	es := func(tags, networking string) string {
		return "type: ExternalService\nname: svc\ntags:\n" + tags + "networking:\n" + networking
	}
	okTags := "  kuma.io/service: svc\n"
	cases := []struct {
		name  string
		doc   string
		doc2  int // 1-based document index expected
		field string
		value string
		want  string
	}{
		{"no service tag", es("  kuma.io/protocol: http\n", "  address: a.example:80\n"), 1, "tags.kuma.io/service", "", "is required"},
		{"no tags", "type: ExternalService\nname: svc\nnetworking:\n  address: a.example:80\n", 1, "tags", "", "is required"},
		{"address without port", es(okTags, "  address: httpbin.org\n"), 1, "networking.address", "httpbin.org", "missing port"},
		{"port out of range", es(okTags, "  address: httpbin.org:70000\n"), 1, "networking.address", "httpbin.org:70000", "out of range"},
		{"port zero", es(okTags, "  address: httpbin.org:0\n"), 1, "networking.address", "httpbin.org:0", "out of range"},
		{"bad hostname", es(okTags, "  address: bad_host!.org:80\n"), 1, "networking.address", "bad_host!.org:80", "invalid hostname"},
		{"no address", es(okTags, "  tls:\n    enabled: false\n"), 1, "networking.address", "", "is required"},
		{"unknown protocol", es(okTags+"  kuma.io/protocol: kafka\n", "  address: a.example:80\n"), 1, "tags.kuma.io/protocol", "kafka", "unsupported protocol"},
		{"service not a DNS name", es("  kuma.io/service: a..b\n", "  address: a.example:80\n"), 1, "tags.kuma.io/service", "a..b", "empty label"},
		{"missing secret", es(okTags, "  address: a.example:443\n  tls:\n    enabled: true\n    caCert:\n      secret: nope\n"), 1, "networking.tls.caCert.secret", "nope", "no Secret"},
		{"two sources", es(okTags, "  address: a.example:443\n  tls:\n    enabled: true\n    caCert:\n      secret: a\n      inline: QQ==\n"), 1, "networking.tls.caCert", "", "two sources"},
		{"no source", es(okTags, "  address: a.example:443\n  tls:\n    enabled: true\n    caCert: {}\n"), 1, "networking.tls.caCert", "", "one of inline"},
		{"bad base64", es(okTags, "  address: a.example:443\n  tls:\n    enabled: true\n    caCert:\n      inline: '!!!'\n"), 1, "networking.tls.caCert.inline", "!!!", "base64"},
		{"CA not a certificate", es(okTags, "  address: a.example:443\n  tls:\n    enabled: true\n    caCert:\n      inlineString: hello\n"), 1, "networking.tls.caCert.inlineString", "inlineString", "no PEM CERTIFICATE"},
		{"key does not match", es(okTags, "  address: a.example:443\n  tls:\n    enabled: true\n    clientCert:\n      inline: "+b64(pki.cert)+"\n    clientKey:\n      inline: "+b64(pki.otherKey)+"\n"), 1, "networking.tls.clientKey.inline", "inline", "does not match"},
		{"cert without key", es(okTags, "  address: a.example:443\n  tls:\n    enabled: true\n    clientCert:\n      inline: "+b64(pki.cert)+"\n"), 1, "networking.tls.clientCert.inline", "", "needs clientKey"},
		{"sni and serverName", es(okTags, "  address: a.example:443\n  tls:\n    enabled: true\n    sni: a\n    serverName: b\n"), 1, "networking.tls.serverName", "b", "give one"},
		{"unknown top-level key", "type: ExternalService\nname: svc\nfoo: 1\ntags:\n  kuma.io/service: svc\nnetworking:\n  address: a.example:80\n", 1, "foo", "", "unknown field"},
		{"unknown tls key", es(okTags, "  address: a.example:443\n  tls:\n    enable: true\n"), 1, "networking.tls.enable", "", "unknown field"},
		{"unknown kube spec key", "apiVersion: kuma.io/v1alpha1\nkind: ExternalService\nmetadata:\n  name: svc\nspec:\n  tags:\n    kuma.io/service: svc\n  networking:\n    address: a.example:80\n  extra: true\n", 1, "spec.extra", "", "unknown field"},
		{"kube wrong apiVersion", "apiVersion: kuma.io/v1\nkind: ExternalService\nmetadata:\n  name: svc\nspec: {}\n", 1, "apiVersion", "kuma.io/v1", "must be kuma.io/v1alpha1"},
		{"not a boolean", es(okTags, "  address: a.example:443\n  tls:\n    enabled: yes please\n"), 1, "networking.tls.enabled", "yes please", "true or false"},
		{"no name", "type: ExternalService\ntags:\n  kuma.io/service: svc\nnetworking:\n  address: a.example:80\n", 1, "name", "", "is required"},
		{"duplicate", es(okTags, "  address: a.example:80\n") + "---\n" + es(okTags, "  address: b.example:80\n"), 2, "name", "svc", "defined twice"},
		{"error in second document", "type: Mesh\nname: default\n---\n" + es(okTags, "  address: a.example\n"), 2, "networking.address", "a.example", "missing port"},
		{"mesh passthrough not bool", "type: Mesh\nname: default\nnetworking:\n  outbound:\n    passthrough: nope\n", 1, "networking.outbound.passthrough", "nope", "true or false"},
		{"mesh unknown routing key", "type: Mesh\nname: default\nrouting:\n  zoneEgres: true\n", 1, "routing.zoneEgres", "", "unknown field"},
		{"egress port out of range", "type: ZoneEgress\nname: e\nzone: z\nnetworking:\n  address: 192.0.2.1\n  port: 0\n", 1, "networking.port", "0", "out of range"},
		{"egress without port", "type: ZoneEgress\nname: e\nzone: z\nnetworking:\n  address: 192.0.2.1\n", 1, "networking.port", "", "is required"},
		{"secret bad base64", "type: Secret\nname: s\ndata: '%%%'\n", 1, "data", "", "base64"},
		{"no type", "name: x\n", 1, "", "", "neither type"},
		{"invalid YAML", "type: [\n", 1, "", "", "invalid YAML"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := Load([]File{{Name: "res/bad.yaml", Data: []byte(c.doc)}})
			if err == nil {
				t.Fatal("accepted")
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("not a FieldError: %v", err)
			}
			if fe.Origin.File != "res/bad.yaml" || fe.Origin.Doc != c.doc2 || fe.Field != c.field || fe.Value != c.value || !strings.Contains(fe.Reason, c.want) {
				t.Errorf("got %#v (%v)\nwant doc %d field %q value %q reason ~%q", fe, err, c.doc2, c.field, c.value, c.want)
			}
			if !strings.Contains(err.Error(), "res/bad.yaml: document ") {
				t.Errorf("message does not name the file and document: %v", err)
			}
		})
	}
}

// All problems of a set are reported at once, not one per run.
func TestAllErrorsReported(t *testing.T) {
	doc := "type: ExternalService\nname: a\ntags: {}\nnetworking:\n  address: x\n"
	_, _, err := Load([]File{{Name: "a.yaml", Data: []byte(doc)}, {Name: "b.yaml", Data: []byte("type: Mesh\nname: m\nfoo: 1\n")}})
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{"a.yaml: document 1 (line 3): tags.kuma.io/service", "missing port", "b.yaml: document 1 (line 3): foo"} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

func TestWarnings(t *testing.T) {
	cases := []struct {
		name, docs, want string
	}{
		{"shared service name without zones", "type: ExternalService\nname: a\ntags:\n  kuma.io/service: s\nnetworking:\n  address: a.example:80\n---\ntype: ExternalService\nname: b\ntags:\n  kuma.io/service: s\nnetworking:\n  address: b.example:80\n", "also provided by ExternalService \"a\""},
		{"service named like another resource", "type: ExternalService\nname: a\ntags:\n  kuma.io/service: b\nnetworking:\n  address: a.example:80\n---\ntype: ExternalService\nname: b\ntags:\n  kuma.io/service: c\nnetworking:\n  address: b.example:80\n", "also the name of ExternalService \"b\""},
		{"ignored Kuma mesh feature", "type: Mesh\nname: default\nlogging:\n  defaultBackend: file\n", "not implemented by shunt"},
		{"unknown type skipped", "type: TrafficPermission\nname: x\n", "not a resource shunt uses"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, warns, err := Load([]File{{Name: "w.yaml", Data: []byte(c.docs)}})
			if err != nil {
				t.Fatal(err)
			}
			var all []string
			for _, w := range warns {
				all = append(all, w.String())
			}
			if !strings.Contains(strings.Join(all, "\n"), c.want) {
				t.Errorf("warnings %q lack %q", all, c.want)
			}
		})
	}
	// Zone-pinned variants of one service are the page's pattern, not a mistake.
	_, warns := loadDir(t, "../controlplane/testdata/zones/universal")
	if len(warns) != 0 {
		t.Errorf("zone-pinned pair warned: %v", warns)
	}
}

func TestMeshMTLS(t *testing.T) {
	const head = "type: Mesh\nname: default\n"
	ok := head + "routing:\n  zoneEgress: true\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 2d\n    conf:\n      caCert:\n        RSAbits: 4096\n        expiration: 5y\n"
	res, _, err := Load([]File{{Name: "m.yaml", Data: []byte(ok)}})
	if err != nil {
		t.Fatal(err)
	}
	m := res.Mesh("default").MTLS
	if m == nil || m.Backend != "ca-1" || m.CertLifetime != 48*time.Hour || m.CAKeyBits != 4096 || m.CALifetime != 5*365*24*time.Hour {
		t.Fatalf("mtls = %+v", m)
	}
	for _, c := range []struct{ name, doc, want string }{
		{"zone egress without mTLS", head + "routing:\n  zoneEgress: true\n", `routing.zoneEgress "true": needs mtls.enabledBackend`},
		{"unknown backend", head + "mtls:\n  enabledBackend: ca-2\n  backends:\n  - name: ca-1\n    type: builtin\n", `mtls.enabledBackend "ca-2": names no backend`},
		{"provided CA", head + "mtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: provided\n", `mtls.backends[0].type "provided": not implemented by shunt`},
		{"bad expiration", head + "mtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: soon\n", `mtls.backends[0].dpCert.rotation.expiration "soon"`},
		{"small key", head + "mtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    conf:\n      caCert:\n        RSAbits: 1024\n", `mtls.backends[0].conf.caCert.RSAbits "1024"`},
		{"typo", head + "mtls:\n  enabledBackend: ca-1\n  backend: []\n", `mtls.backend: unknown field`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := Load([]File{{Name: "m.yaml", Data: []byte(c.doc)}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

package bootstrap

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func metadata(t *testing.T) *structpb.Struct {
	t.Helper()
	m, err := structpb.NewStruct(map[string]any{
		"kuma.io/mesh":       "default",
		"dataplane.dns.port": "15053",
		"features":           []any{"feature-tcp-accesslog-via-named-pipe"},
		"version":            map[string]any{"kumaDp": map[string]any{"version": "2.14.3"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestGolden(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
	}{
		{"pipe", Config{
			NodeID: "default.web-1", Zone: "zone-1", Metadata: metadata(t),
			XDS: XDS{Pipe: "/run/shunt/xds.sock"},
		}},
		{"tcp-tls-token", Config{
			NodeID: "default.web-1", Cluster: "web", Zone: "zone-1", Metadata: metadata(t),
			Admin: netip.MustParseAddrPort("127.0.0.1:0"),
			XDS: XDS{
				Address:       "cp.example:5678",
				TLS:           &TLS{CAFile: "/etc/shunt/ca.pem", CertFile: "/etc/shunt/dp.pem", KeyFile: "/etc/shunt/dp.key"},
				Authorization: "Bearer dataplane-token",
			},
		}},
		{"tcp-ip-system-roots", Config{
			NodeID: "vm-1", Admin: netip.MustParseAddrPort("[::1]:9901"),
			XDS: XDS{Address: "10.0.0.5:15680", TLS: &TLS{ServerName: "cp.internal"}},
		}},
		{"tcp-plain", Config{NodeID: "vm-1", XDS: XDS{Address: "127.0.0.1:15680"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Build(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := JSON(b)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.name+".json")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("bootstrap differs from %s (go test -update rewrites it):\n%s", path, got)
			}
			// What Envoy reads back is what was built, in both formats.
			y, err := YAML(b)
			if err != nil {
				t.Fatal(err)
			}
			for format, data := range map[string][]byte{"json": got, "yaml": y} {
				back, err := Parse(data)
				if err != nil {
					t.Fatalf("%s: %v", format, err)
				}
				if !proto.Equal(back, b) {
					t.Errorf("%s: parsed bootstrap differs from the built one", format)
				}
			}
		})
	}
}

func TestBuildRefuses(t *testing.T) {
	ok := XDS{Pipe: "/run/shunt/xds.sock"}
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no node id", Config{XDS: ok}, "node id is empty"},
		{"admin off loopback", Config{NodeID: "n", XDS: ok, Admin: netip.MustParseAddrPort("0.0.0.0:9901")}, "admin address 0.0.0.0:9901: must be on loopback"},
		{"no target", Config{NodeID: "n"}, "exactly one xDS target"},
		{"two targets", Config{NodeID: "n", XDS: XDS{Pipe: "/x.sock", Address: "127.0.0.1:1"}}, "exactly one xDS target"},
		{"relative pipe", Config{NodeID: "n", XDS: XDS{Pipe: "xds.sock"}}, `xDS socket "xds.sock": must be an absolute path`},
		{"TLS on a pipe", Config{NodeID: "n", XDS: XDS{Pipe: "/x.sock", TLS: &TLS{}}}, "TLS applies to a TCP control plane only"},
		{"not host:port", Config{NodeID: "n", XDS: XDS{Address: "cp.example"}}, `xDS address "cp.example": not HOST:PORT`},
		{"port 0", Config{NodeID: "n", XDS: XDS{Address: "cp.example:0"}}, `invalid port "0"`},
		{"cert without key", Config{NodeID: "n", XDS: XDS{Address: "cp:1", TLS: &TLS{CertFile: "/c.pem"}}}, "certificate and key must be given together"},
		{"relative CA", Config{NodeID: "n", XDS: XDS{Address: "cp:1", TLS: &TLS{CAFile: "ca.pem"}}}, `CA file "ca.pem": must be an absolute path`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestParseRefusesUnknownFields(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown top-level field": `{"node": {"id": "n"}, "admn": {}}`,
		"unknown nested field":    `{"node": {"id": "n", "zone": "z"}}`,
		"invalid value":           `{"static_resources": {"clusters": [{"name": ""}]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/shunt-dev/shunt/controlplane"
	"github.com/shunt-dev/shunt/controlplane/meshca"
	"github.com/shunt-dev/shunt/mesh"
)

// resourceDirs are every resource set the project ships or tests with.
func resourceDirs(t *testing.T) []string {
	t.Helper()
	var dirs []string
	for _, pat := range []string{"../../../examples/*/resources", "../../fixtures/externalservices/*/*", "../../../controlplane/testdata/*/*", "../../../controlplane/testdata/egress-tls"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range m {
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				dirs = append(dirs, d)
			}
		}
	}
	if len(dirs) < 5 {
		t.Fatalf("found only %v", dirs)
	}
	return dirs
}

// Every message the control plane emits, for every node of every shipped
// or tested resource set, uses only fields the double implements, and the
// double builds a runtime from it: what reaches Envoy has been run here.
func TestEmittedConfigIsImplemented(t *testing.T) {
	for _, dir := range resourceDirs(t) {
		t.Run(dir, func(t *testing.T) {
			var files []mesh.File
			ps, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
			for _, p := range ps {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				files = append(files, mesh.File{Name: p, Data: b})
			}
			res, _, err := mesh.Load(files)
			if err != nil {
				t.Fatal(err)
			}
			alloc, _ := mesh.NewVIPAllocator(mesh.DefaultVIPv4CIDR, mesh.DefaultVIPv6CIDR)
			vips, err := alloc.Allocate(mesh.Hostnames(res), mesh.VIPs{})
			if err != nil {
				t.Fatal(err)
			}
			var nodes []controlplane.Resources
			var secrets []types.Resource
			for _, m := range append(res.MeshNames(), mesh.DefaultMesh) {
				cfg := res.Mesh(m)
				if cfg.MTLS != nil {
					ca, err := meshca.LoadOrCreate("", m, cfg.MTLS.Backend, 2048, time.Hour*48, time.Now())
					if err != nil {
						t.Fatal(err)
					}
					id, err := ca.Issue("web", time.Hour, time.Now())
					if err != nil {
						t.Fatal(err)
					}
					secrets = append(secrets, controlplane.MeshSecrets(ca, id)...)
				}
				for _, zone := range []string{"", "zone-1", "zone-2"} {
					out, err := controlplane.Translate(res.View(m, zone), vips, controlplane.DefaultTranslateOptions())
					if err != nil {
						t.Fatal(err)
					}
					nodes = append(nodes, out)
				}
			}
			for _, eg := range res.ZoneEgresses {
				var views []mesh.View
				for _, m := range res.MeshNames() {
					if c := res.Mesh(m); c.ZoneEgress && c.MTLS != nil {
						views = append(views, res.View(m, eg.Zone))
					}
				}
				out, err := controlplane.TranslateEgress(eg, views, controlplane.DefaultTranslateOptions())
				if err != nil {
					t.Fatal(err)
				}
				nodes = append(nodes, out)
			}
			st := xdsState{secrets: map[string]*tlsv3.Secret{}}
			for _, r := range secrets {
				st.secrets[r.(*tlsv3.Secret).GetName()] = r.(*tlsv3.Secret)
			}
			checkAll := func(kind string, rs []types.Resource) {
				for _, r := range rs {
					// What the wire carries: the cached form holds
					// unknown fields until decoded.
					b, err := proto.Marshal(r)
					if err != nil {
						t.Fatal(err)
					}
					fresh := r.ProtoReflect().New().Interface()
					if err := unpack(b, fresh, kind); err != nil {
						t.Errorf("%v", err)
					}
				}
			}
			checkAll("secret", secrets)
			for _, n := range nodes {
				checkAll("listener", n.Listeners)
				checkAll("cluster", n.Clusters)
				st.listeners = map[string]*listenerv3.Listener{}
				st.clusters = map[string]*clusterv3.Cluster{}
				for _, r := range n.Listeners {
					st.listeners[r.(*listenerv3.Listener).GetName()] = r.(*listenerv3.Listener)
				}
				for _, r := range n.Clusters {
					st.clusters[r.(*clusterv3.Cluster).GetName()] = r.(*clusterv3.Cluster)
				}
				rt, err := build(st)
				if err != nil {
					t.Errorf("the double cannot run it: %v", err)
					continue
				}
				for name, c := range rt.clusters {
					if c.tls != nil && c.tls.err != nil {
						t.Errorf("cluster %s: %v", name, c.tls.err)
					}
				}
			}
		})
	}
}

// A field the double does not implement is refused with its path.
func TestUnimplementedFieldIsNamed(t *testing.T) {
	b := []byte(`{"node":{"id":"n"},"dynamic_resources":{"ads_config":{"api_type":"GRPC","transport_api_version":"V3","grpc_services":[{"envoy_grpc":{"cluster_name":"xds"}}]},"lds_config":{"ads":{}},"cds_config":{"ads":{}}},"static_resources":{"clusters":[{"name":"xds","type":"STATIC","load_assignment":{"cluster_name":"xds","endpoints":[{"lb_endpoints":[{"endpoint":{"address":{"socket_address":{"address":"127.0.0.1","port_value":1}}}}]}]},"circuit_breakers":{}}]}}`)
	_, _, err := fromBootstrap(b)
	if err == nil || !strings.Contains(err.Error(), "circuit_breakers: field not implemented") {
		t.Fatalf("bootstrap with circuit_breakers: %v", err)
	}
}

// docs/xds.md carries the table of implemented fields.
func TestFieldTableInDocs(t *testing.T) {
	b, err := os.ReadFile("../../../docs/xds.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), fieldTable()) {
		t.Errorf("docs/xds.md does not hold the current field table; paste the output of\n  go run ./tests/standin/meshproxy -print-fields\nbetween its markers")
	}
}

// The bootstraps shunt writes for Envoy start the double too.
func TestShuntBootstraps(t *testing.T) {
	for _, name := range []string{"pipe.json", "tcp-plain.json"} {
		b, err := os.ReadFile(filepath.Join("../../../envoy/bootstrap/testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		p, admin, err := fromBootstrap(b)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if p.xdsTarget == "" || admin != "127.0.0.1:9901" || !p.nodeOnce {
			t.Errorf("%s: target %q admin %q node once %v", name, p.xdsTarget, admin, p.nodeOnce)
		}
	}
}

package controlplane

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/shunt-dev/shunt/mesh"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func readDir(t testing.TB, dir string) []mesh.File {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no resources in %s (%v)", dir, err)
	}
	var files []mesh.File
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, mesh.File{Name: filepath.Base(p), Data: b})
	}
	return files
}

func translateDir(t testing.TB, dir, zone string) Resources {
	t.Helper()
	res, _, err := mesh.Load(readDir(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := mesh.NewVIPAllocator(mesh.DefaultVIPv4CIDR, mesh.DefaultVIPv6CIDR)
	if err != nil {
		t.Fatal(err)
	}
	vips, err := alloc.Allocate(mesh.Hostnames(res), mesh.VIPs{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := Translate(res.View(mesh.DefaultMesh, zone), vips, DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func toJSON(t testing.TB, r Resources) []byte {
	t.Helper()
	var doc struct {
		Listeners []json.RawMessage `json:"listeners"`
		Clusters  []json.RawMessage `json:"clusters"`
	}
	enc := func(rs []types.Resource) []json.RawMessage {
		var out []json.RawMessage
		for _, x := range rs {
			b, err := protojson.Marshal(x)
			if err != nil {
				t.Fatal(err)
			}
			// protojson's output is deliberately unstable in whitespace.
			var c bytes.Buffer
			if err := json.Compact(&c, b); err != nil {
				t.Fatal(err)
			}
			out = append(out, c.Bytes())
		}
		return out
	}
	doc.Listeners, doc.Clusters = enc(r.Listeners), enc(r.Clusters)
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestGolden(t *testing.T) {
	cases := []struct{ name, dir, zone string }{
		{"httpbin", "httpbin", "zone-1"},
		{"zones-zone-1", "zones", "zone-1"},
		{"zones-zone-2", "zones", "zone-2"},
		{"egress", "egress", "zone-1"},
		{"tcp", "tcp", "zone-1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			uni := toJSON(t, translateDir(t, filepath.Join("testdata", c.dir, "universal"), c.zone))
			kube := toJSON(t, translateDir(t, filepath.Join("testdata", c.dir, "kubernetes"), c.zone))
			if !bytes.Equal(uni, kube) {
				t.Errorf("Universal and Kubernetes forms translate differently")
			}
			golden := filepath.Join("testdata", c.name+".golden")
			if *update {
				if err := os.WriteFile(golden, uni, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if !bytes.Equal(uni, want) {
				t.Errorf("%s differs from the output; run go test -run TestGolden -update and review the diff", golden)
			}
		})
	}
}

func dnsTable(t testing.TB, r Resources) map[string][]string {
	t.Helper()
	for _, x := range r.Listeners {
		l := x.(*listener.Listener)
		if l.GetName() != DNSListenerName {
			continue
		}
		for _, f := range l.GetListenerFilters() {
			if f.GetName() != DNSFilterName {
				continue
			}
			var cfg dnsfilter.DnsFilterConfig
			if err := f.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
				t.Fatal(err)
			}
			out := map[string][]string{}
			for _, d := range cfg.GetServerConfig().GetInlineDnsTable().GetVirtualDomains() {
				out[d.GetName()] = d.GetEndpoint().GetAddressList().GetAddress()
			}
			return out
		}
	}
	t.Fatal("no DNS listener")
	return nil
}

func clusterByName(r Resources) map[string]*cluster.Cluster {
	out := map[string]*cluster.Cluster{}
	for _, x := range r.Clusters {
		c := x.(*cluster.Cluster)
		out[c.GetName()] = c
	}
	return out
}

func hasOriginalDst(r Resources) bool {
	for _, c := range clusterByName(r) {
		if c.GetType() == cluster.Cluster_ORIGINAL_DST {
			return true
		}
	}
	return false
}

// What the agent relies on, checked directly rather than through goldens.
func TestAgentContract(t *testing.T) {
	t.Run("httpbin names", func(t *testing.T) {
		r := translateDir(t, "testdata/httpbin/universal", "")
		table := dnsTable(t, r)
		for _, n := range []string{"httpbin.mesh", "httpbin.org"} {
			if len(table[n]) != 2 {
				t.Errorf("%s: want an IPv4 and an IPv6 VIP, got %v", n, table[n])
			}
		}
		if !hasOriginalDst(r) {
			t.Error("passthrough is on by default but no ORIGINAL_DST cluster")
		}
		c := clusterByName(r)[ExternalClusterName("httpbin")]
		if c.GetType() != cluster.Cluster_LOGICAL_DNS || c.GetTransportSocket() == nil {
			t.Errorf("httpbin cluster: %v", c)
		}
	})
	t.Run("zone-pinned names", func(t *testing.T) {
		table := dnsTable(t, translateDir(t, "testdata/zones/universal", "zone-1"))
		if _, ok := table["zone-2.httpbin.org"]; ok {
			t.Error("zone-1 resolves zone-2's service")
		}
		if _, ok := table["zone-1.httpbin.org"]; !ok {
			t.Error("zone-1 does not resolve its own service")
		}
		if _, ok := table["httpbin.mesh"]; !ok {
			t.Error("httpbin.mesh missing")
		}
		if table := dnsTable(t, translateDir(t, "testdata/zones/universal", "zone-3")); len(table) != 0 {
			t.Errorf("zone-3 resolves %v", table)
		}
	})
	t.Run("egress", func(t *testing.T) {
		r := translateDir(t, "testdata/egress/universal", "zone-1")
		if hasOriginalDst(r) {
			t.Error("passthrough off but an ORIGINAL_DST cluster is present")
		}
		c := clusterByName(r)[ExternalClusterName("example")]
		eps := c.GetLoadAssignment().GetEndpoints()
		if len(eps) != 1 || eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress() != "192.0.2.10" {
			t.Errorf("example does not go through the egress: %v", c.GetLoadAssignment())
		}
	})
	t.Run("no passthrough", func(t *testing.T) {
		r := translateDir(t, "testdata/no-passthrough/universal", "")
		if hasOriginalDst(r) {
			t.Error("ORIGINAL_DST cluster with passthrough disabled")
		}
		if _, ok := clusterByName(r)[BlackholeCluster]; !ok {
			t.Error("no blackhole cluster for unknown destinations")
		}
	})
}

func TestListenersPerRoute(t *testing.T) {
	r := translateDir(t, "testdata/httpbin/universal", "")
	var names []string
	for _, x := range r.Listeners {
		names = append(names, x.(*listener.Listener).GetName())
	}
	want := []string{"outbound:httpbin.mesh:80", "outbound:httpbin.org:443", OutboundListenerName, DNSListenerName}
	if !slices.Equal(names, want) {
		t.Errorf("listeners %v, want %v", names, want)
	}
}

// The egress node's own configuration, and the sidecar's clusters that lead
// to it, in a mesh with mTLS shared by two meshes.
func TestGoldenEgressNode(t *testing.T) {
	dir := filepath.Join("testdata", "egress-tls")
	res, _, err := mesh.Load(readDir(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	var views []mesh.View
	for _, m := range res.MeshNames() {
		views = append(views, res.View(m, "zone-1"))
	}
	out, err := TranslateEgress(res.ZoneEgresses[0], views, DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, filepath.Join("testdata", "egress-node.golden"), toJSON(t, out))
	side := translateDir(t, dir, "zone-1")
	checkGolden(t, filepath.Join("testdata", "egress-sidecar.golden"), toJSON(t, side))
}

func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the output; run go test -run TestGolden -update and review the diff", golden)
	}
}

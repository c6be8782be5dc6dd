package xdsclient

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/shunt-dev/shunt/mesh"
)

// kumaFixture translates what kuma-cp 2.14.3 sent a dataplane, as
// scripts/record-kuma-fixtures.sh recorded it.
func kumaFixture(t *testing.T, name string) *mesh.AgentSnapshot {
	t.Helper()
	dir := filepath.Join("..", "tests", "fixtures", "kuma", name)
	read := func(file string) *discoveryv3.DiscoveryResponse {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		var r discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s/%s: %v", name, file, err)
		}
		return &r
	}
	var ls []*listenerv3.Listener
	for _, a := range read("lds.pb").GetResources() {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, &l)
	}
	var cs []*clusterv3.Cluster
	for _, a := range read("cds.pb").GetResources() {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, &c)
	}
	var es []*endpointv3.ClusterLoadAssignment
	for _, a := range read("eds.pb").GetResources() {
		var e endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&e); err != nil {
			t.Fatal(err)
		}
		es = append(es, &e)
	}
	snap, err := Translate(ls, cs, es)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return snap
}

func TestKumaFixtures(t *testing.T) {
	tests := []struct {
		fixture     string
		passthrough bool
	}{
		// Without feature-embedded-dns: the dns_filter of listener kuma:dns.
		{"dns-filter", true},
		// With it: the JSON on route /dns of _kuma:dynamicconfig.
		{"embedded-dns", true},
		// Mesh passthrough off: the inbound:passthrough:* ORIGINAL_DST
		// clusters are still there, and must not count.
		{"embedded-dns-no-passthrough", false},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			snap := kumaFixture(t, tt.fixture)
			for _, name := range []string{"httpbin.mesh", "httpbin.org", "app.mesh"} {
				got := snap.Names[name]
				// kuma-cp gives each VIP twice: IPv4, and IPv4-mapped IPv6
				// for AAAA. Which VIP varies between recordings.
				if len(got) != 2 || !got[0].Is4() || !got[1].Is4In6() || got[1].Unmap() != got[0] ||
					!netip.MustParsePrefix("240.0.0.0/4").Contains(got[0]) {
					t.Errorf("%s = %v, want a VIP from 240.0.0.0/4 and its IPv4-mapped form", name, got)
				}
			}
			if len(snap.Names) != 3 {
				t.Errorf("names = %v, want app.mesh, httpbin.mesh, httpbin.org", snap.Names)
			}
			if snap.Passthrough != tt.passthrough {
				t.Errorf("Passthrough = %v, want %v", snap.Passthrough, tt.passthrough)
			}
			// The ExternalService's cluster resolves its address by DNS.
			if !slices.Contains(snap.DNSHosts, mesh.DNSHost{Host: "httpbin.org", Port: 443}) {
				t.Errorf("DNSHosts = %v, want httpbin.org:443", snap.DNSHosts)
			}
		})
	}
}

// kuma-cp's real responses, served by go-control-plane's server: the
// client ACKs every one (nothing kuma-cp sends is refused) and publishes
// the same snapshot as Translate.
func TestKumaFixturesOverADS(t *testing.T) {
	dir := filepath.Join("..", "tests", "fixtures", "kuma", "embedded-dns")
	var res [3][]types.Resource
	for i, file := range []string{"lds.pb", "cds.pb", "eds.pb"} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		var r discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		for _, a := range r.GetResources() {
			m, err := a.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			res[i] = append(res[i], m.(types.Resource))
		}
	}
	srv := startGCPServer(t)
	srv.set(t, "default.dp-2", "1", res[0], res[1], res[2])
	c, err := New(Config{Server: srv.addr, NodeID: "default.dp-2", Logger: quietLogger(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	want := kumaFixture(t, "embedded-dns")
	got := nextUpdate(t, c, 5*time.Second, func(*mesh.AgentSnapshot) bool { return true })
	if !sameContent(got, want) {
		t.Errorf("over ADS: %+v\nTranslate: %+v", got, want)
	}
	if st := c.Status(); st.LastNACK != "" || st.Acked[ListenerType] != "1" || st.Acked[ClusterType] != "1" || st.Acked[EndpointType] != "1" {
		t.Errorf("status %+v, want every type ACKed at version 1 and no NACK", st)
	}
}

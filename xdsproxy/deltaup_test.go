package xdsproxy

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

func newDeltaWorld(t *testing.T) *world {
	t.Helper()
	return newWorldWith(t, uint32(os.Getuid()), uint32(os.Getgid()), true)
}

// setNames serves a version with one DNS listener per name (listener
// "dns-<name>", the name at vip), the cluster egress and its endpoint.
func (s *upstreamServer) setNames(t *testing.T, version string, names map[string]string) {
	t.Helper()
	var listeners []types.Resource
	for n, vip := range names {
		l := dnsListener(t, n, vip)
		l.Name = "dns-" + n
		listeners = append(listeners, l)
	}
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: listeners,
		resourcev3.ClusterType:  {edsCluster("egress")},
		resourcev3.EndpointType: {assignment("egress", "192.0.2.10", 10002)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		t.Fatal(err)
	}
}

func (s *upstreamServer) findDelta(match func(deltaRequest) bool) *deltaRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.deltaRequests {
		if match(r) {
			return &r
		}
	}
	return nil
}

// vips is what shunt's client answers name with.
func (w *world) vips(name string) []netip.Addr {
	s := w.client.Current()
	if s == nil {
		return nil
	}
	return s.Names[name]
}

func oneVIP(got []netip.Addr, want string) bool {
	return len(got) == 1 && got[0].String() == want
}

// shunt alone on a delta upstream: the names come from the deltas, and a
// listener the control plane removes takes its name out of the DNS view.
func TestDeltaUpstreamNamesAndRemoval(t *testing.T) {
	w := newDeltaWorld(t)
	w.up.setNames(t, "1", map[string]string{"httpbin.mesh": "240.0.0.1", "other.mesh": "240.0.0.9"})
	eventually(t, 5*time.Second, "both names from the deltas", func() bool {
		return oneVIP(w.vips("httpbin.mesh"), "240.0.0.1") && oneVIP(w.vips("other.mesh"), "240.0.0.9")
	})
	if s := w.client.Current(); len(s.AllowedEndpoints) != 1 || s.AllowedEndpoints[0].String() != "192.0.2.10:10002" {
		t.Errorf("allowed endpoints = %v, want the EDS cluster's 192.0.2.10:10002", s.AllowedEndpoints)
	}
	w.up.setNames(t, "2", map[string]string{"httpbin.mesh": "240.0.0.2"})
	eventually(t, 5*time.Second, "other.mesh gone and httpbin.mesh changed", func() bool {
		return w.vips("other.mesh") == nil && oneVIP(w.vips("httpbin.mesh"), "240.0.0.2")
	})
	// The control plane told the removal as one: the stream is delta.
	if w.up.find(func(*discoveryv3.DiscoveryRequest) bool { return true }) != nil {
		t.Error("a state-of-the-world request went upstream")
	}
	if r := w.up.findDelta(func(r deltaRequest) bool {
		return r.req.GetTypeUrl() == resourcev3.ListenerType && r.req.GetResponseNonce() != "" && r.req.GetErrorDetail() == nil
	}); r == nil {
		t.Error("no listener ACK upstream")
	}
	if streams, open := w.up.counts(); streams != 1 || open != 1 {
		t.Errorf("upstream streams: %d opened, %d open; want 1 and 1", streams, open)
	}
}

// A SotW Envoy, then a delta Envoy, behind a delta upstream: each gets the
// whole configuration its way, types shunt does not read included, over
// the one upstream stream.
func TestDeltaUpstreamSotWAndDeltaEnvoy(t *testing.T) {
	w := newDeltaWorld(t)
	w.up.setWith(t, "1", "240.0.0.1", []string{"egress", "egress-2"}, route("r1", "backend"))
	e := startEnvoy(t, w.sock, envoyNode(), nil)
	eventually(t, 5*time.Second, "the SotW Envoy's configuration", func() bool {
		return e.version(resourcev3.ListenerType) == "1" && e.version(resourcev3.ClusterType) == "1" && e.version(resourcev3.RouteType) == "1"
	})
	if n := len(e.lastAccepted(resourcev3.ClusterType).GetResources()); n != 2 {
		t.Errorf("SotW Envoy got %d clusters, want the full set of 2", n)
	}
	var got routev3.RouteConfiguration
	if err := e.lastAccepted(resourcev3.RouteType).GetResources()[0].UnmarshalTo(&got); err != nil || !proto.Equal(&got, route("r1", "backend")) {
		t.Errorf("route through the proxy = %v (%v), want it unchanged", &got, err)
	}
	eventually(t, 5*time.Second, "shunt's view", func() bool { return oneVIP(w.vips("httpbin.mesh"), "240.0.0.1") })

	// A change arrives as a delta; the SotW Envoy is sent the full set.
	w.up.setWith(t, "2", "240.0.0.2", []string{"egress"}, route("r1", "backend"))
	eventually(t, 5*time.Second, "version 2 at the SotW Envoy", func() bool {
		return e.version(resourcev3.ClusterType) == "2" && len(e.lastAccepted(resourcev3.ClusterType).GetResources()) == 1 &&
			e.version(resourcev3.ListenerType) == "2"
	})
	eventually(t, 5*time.Second, "shunt's view of version 2", func() bool { return oneVIP(w.vips("httpbin.mesh"), "240.0.0.2") })
	e.cancel()
	<-e.done

	// A delta Envoy replaces it: the held state at once, then removals.
	w.up.setWith(t, "3", "240.0.0.3", []string{"egress", "egress-2"}, route("r1", "backend-3"))
	d := startDeltaEnvoy(t, w.sock, envoyNode(), nil)
	eventually(t, 5*time.Second, "the delta Envoy's configuration", func() bool {
		return d.count(resourcev3.ClusterType) == 2 && d.has(resourcev3.ListenerType, "dns") != nil &&
			d.has(resourcev3.EndpointType, "egress-2") != nil && d.has(resourcev3.RouteType, "r1") != nil
	})
	eventually(t, 5*time.Second, "route r1 of version 3 at the delta Envoy", func() bool {
		var r routev3.RouteConfiguration
		return d.has(resourcev3.RouteType, "r1").UnmarshalTo(&r) == nil && proto.Equal(&r, route("r1", "backend-3"))
	})
	w.up.setWith(t, "4", "240.0.0.4", []string{"egress"}, route("r1", "backend-3"))
	eventually(t, 5*time.Second, "the removal of egress-2 at the delta Envoy", func() bool {
		return d.count(resourcev3.ClusterType) == 1 && d.has(resourcev3.ClusterType, "egress-2") == nil
	})
	eventually(t, 5*time.Second, "shunt's view of version 4", func() bool { return oneVIP(w.vips("httpbin.mesh"), "240.0.0.4") })
	if streams, open := w.up.counts(); streams != 1 || open != 1 {
		t.Errorf("upstream streams: %d opened, %d open; want 1 and 1", streams, open)
	}
}

// Envoy's NACK goes upstream as the delta NACK of that nonce; shunt keeps
// the accepted version, and a reconnect announces the accepted versions,
// not the rejected ones.
func TestDeltaUpstreamNACKNotAdopted(t *testing.T) {
	w := newDeltaWorld(t)
	e := startEnvoy(t, w.sock, envoyNode(), func(r *discoveryv3.DiscoveryResponse) string {
		if r.GetTypeUrl() == resourcev3.ListenerType && r.GetVersionInfo() == "2" {
			return "listener dns: unknown field"
		}
		return ""
	})
	eventually(t, 5*time.Second, "version 1 at Envoy and shunt", func() bool {
		return e.version(resourcev3.ListenerType) == "1" && w.shuntVIP() == "240.0.0.1"
	})
	w.up.set(t, "2", "240.0.0.2")
	nack := func(r deltaRequest) bool {
		return r.req.GetTypeUrl() == resourcev3.ListenerType && r.req.GetErrorDetail().GetMessage() == "listener dns: unknown field" && r.req.GetResponseNonce() != ""
	}
	eventually(t, 5*time.Second, "the NACK upstream", func() bool { return w.up.findDelta(nack) != nil })
	time.Sleep(300 * time.Millisecond)
	if v := w.shuntVIP(); v != "240.0.0.1" {
		t.Fatalf("shunt answers %q after Envoy rejected version 2, want the accepted 240.0.0.1", v)
	}
	if st := w.proxy.Status(); st.LastEnvoyNACK != "listener dns: unknown field" {
		t.Errorf("status = %+v, want the NACK recorded", st)
	}

	// Upstream restarts: the new stream announces version 1's listener,
	// which is what Envoy and shunt hold, so the control plane sends
	// version 2 again (and Envoy rejects it again).
	first := w.up.findDelta(nack).gen
	w.up.stop()
	w.up.serve(t, w.up.addr)
	eventually(t, 5*time.Second, "the resubscription", func() bool {
		return w.up.findDelta(func(r deltaRequest) bool {
			return r.gen != first && r.req.GetTypeUrl() == resourcev3.ListenerType && r.req.GetInitialResourceVersions()["dns"] != ""
		}) != nil
	})
	r := w.up.findDelta(func(r deltaRequest) bool {
		return r.gen != first && r.req.GetTypeUrl() == resourcev3.ListenerType && r.req.GetInitialResourceVersions()["dns"] != ""
	})
	eventually(t, 5*time.Second, "the NACK on the new stream", func() bool {
		return w.up.findDelta(func(q deltaRequest) bool { return q.gen == r.gen && nack(q) }) != nil
	})
	if v := w.shuntVIP(); v != "240.0.0.1" {
		t.Fatalf("shunt answers %q after the reconnect, want the accepted 240.0.0.1", v)
	}
	w.up.set(t, "3", "240.0.0.3")
	eventually(t, 5*time.Second, "version 3 at Envoy and shunt", func() bool {
		return e.version(resourcev3.ListenerType) == "3" && w.shuntVIP() == "240.0.0.3"
	})
}

// After the upstream comes back, the proxy subscribes again with what it
// holds as initial_resource_versions: an unchanged configuration is not
// sent again, and a change made during the outage arrives.
func TestDeltaUpstreamReconnectResubscribes(t *testing.T) {
	w := newDeltaWorld(t)
	w.up.setNames(t, "1", map[string]string{"httpbin.mesh": "240.0.0.1", "other.mesh": "240.0.0.9"})
	eventually(t, 5*time.Second, "version 1", func() bool {
		return oneVIP(w.vips("httpbin.mesh"), "240.0.0.1") && oneVIP(w.vips("other.mesh"), "240.0.0.9")
	})
	first := w.up.findDelta(func(r deltaRequest) bool { return r.req.GetNode() != nil })
	if first == nil {
		t.Fatal("no delta request carried the node")
	}
	w.up.stop()
	time.Sleep(200 * time.Millisecond)
	if !oneVIP(w.vips("httpbin.mesh"), "240.0.0.1") {
		t.Errorf("during the outage shunt answers %v, want 240.0.0.1", w.vips("httpbin.mesh"))
	}
	// The change made while shunt was away: other.mesh removed.
	w.up.setNames(t, "2", map[string]string{"httpbin.mesh": "240.0.0.1"})
	w.up.serve(t, w.up.addr)
	eventually(t, 5*time.Second, "the removal made during the outage", func() bool {
		return w.vips("other.mesh") == nil && oneVIP(w.vips("httpbin.mesh"), "240.0.0.1")
	})
	re := w.up.findDelta(func(r deltaRequest) bool {
		return r.gen != first.gen && r.req.GetTypeUrl() == resourcev3.ListenerType
	})
	if re == nil {
		t.Fatal("no listener subscription on the new stream")
	}
	iv := re.req.GetInitialResourceVersions()
	if iv["dns-httpbin.mesh"] == "" || iv["dns-other.mesh"] == "" {
		t.Errorf("initial_resource_versions on the new stream = %v, want both listeners held", iv)
	}
	if w.up.findDelta(func(r deltaRequest) bool { return r.gen == re.gen && r.req.GetNode().GetId() == nodeID }) == nil {
		t.Errorf("the new stream never named node %q", nodeID)
	}
	if st := w.proxy.Status(); st.Reconnects < 1 || !st.Connected {
		t.Errorf("status after the outage = %+v, want connected again, reconnects counted", st)
	}
	if _, open := w.up.counts(); open != 1 {
		t.Errorf("%d upstream streams open after the outage, want 1", open)
	}
}

package xdsclient

import (
	"reflect"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func response(t *testing.T, typ string, ms ...proto.Message) *discoveryv3.DiscoveryResponse {
	t.Helper()
	r := &discoveryv3.DiscoveryResponse{TypeUrl: typ}
	for _, m := range ms {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		r.Resources = append(r.Resources, a)
	}
	return r
}

// A resource whose bytes are unchanged keeps its entry; a changed one gets a
// new one; and what is composed equals a full translation.
func TestDecodeReusesUnchangedResources(t *testing.T) {
	s := &session{memo: map[string]map[resourceHash]any{}}
	a := dnsListener(t, "a", domain{"a.mesh", []string{"240.0.0.1"}})
	b := dnsListener(t, "b", domain{"b.mesh", []string{"240.0.0.2"}}, domain{"a.mesh", []string{"240.0.0.3", "240.0.0.1"}})
	c1 := cluster("c1", clusterv3.Cluster_STATIC, "10.0.0.1:80")
	c2 := cluster("c2", clusterv3.Cluster_LOGICAL_DNS, "example.com:443")

	first, err := decodeAll(s, response(t, ListenerType, a, b), newListenerEntry)
	if err != nil {
		t.Fatal(err)
	}
	b2 := dnsListener(t, "b", domain{"b.mesh", []string{"240.0.0.4"}})
	second, err := decodeAll(s, response(t, ListenerType, a, b2), newListenerEntry)
	if err != nil {
		t.Fatal(err)
	}
	if second[0] != first[0] {
		t.Error("the unchanged listener was decoded again")
	}
	if second[1] == first[1] {
		t.Error("the changed listener kept its old entry")
	}
	clusters, err := decodeAll(s, response(t, ClusterType, c1, c2), newClusterEntry)
	if err != nil {
		t.Fatal(err)
	}
	for _, ls := range [][]*listenerv3.Listener{{a, b}, {a, b2}} {
		got, err := compose(map[bool][]*listenerEntry{true: first, false: second}[ls[1] == b], clusters, nil)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Translate(ls, []*clusterv3.Cluster{c1, c2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("composed %+v\nwant %+v", got, want)
		}
	}

	// An invalid resource is refused whether or not it was seen before.
	bad := dnsListener(t, "bad", domain{"x.mesh", []string{"not-an-ip"}})
	for range 2 {
		ls, err := decodeAll(s, response(t, ListenerType, a, bad), newListenerEntry)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := compose(ls, clusters, nil); err == nil {
			t.Error("an invalid listener was accepted")
		}
	}
}

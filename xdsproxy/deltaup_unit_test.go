package xdsproxy

import (
	"context"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/shunt-dev/shunt/xdsclient"
)

// fakeDelta is the control plane's end of one delta stream, driven by the
// test.
type fakeDelta struct {
	sent []*discoveryv3.DeltaDiscoveryRequest
	in   []*discoveryv3.DeltaDiscoveryResponse
}

func (f *fakeDelta) Send(r *discoveryv3.DeltaDiscoveryRequest) error {
	f.sent = append(f.sent, r)
	return nil
}

func (f *fakeDelta) Recv() (*discoveryv3.DeltaDiscoveryResponse, error) {
	r := f.in[0]
	f.in = f.in[1:]
	return r, nil
}

func openFake(t *testing.T, s *deltaState) (*deltaUpstream, *fakeDelta) {
	t.Helper()
	f := &fakeDelta{}
	st, err := s.wrap(func(context.Context) (xdsclient.DeltaADSStream, error) { return f, nil })(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.(*deltaUpstream), f
}

func body(s string) *anypb.Any {
	a, _ := anypb.New(wrapperspb.String(s))
	return a
}

// The SotW requests of the proxy's loop become the delta subscription
// changes that say the same; a repeat sends nothing.
func TestDeltaUpstreamSubscriptions(t *testing.T) {
	const typ = resourcev3.EndpointType
	d, f := openFake(t, newDeltaState())
	steps := []struct {
		names      []string
		sub, unsub []string
		sent       bool
	}{
		{names: []string{"a", "b"}, sub: []string{"a", "b"}, sent: true},
		{names: []string{"b", "a"}, sent: false},
		{names: []string{"b", "c"}, sub: []string{"c"}, unsub: []string{"a"}, sent: true},
		{names: nil, sub: []string{"*"}, sent: true},
		{names: nil, sent: false},
		{names: []string{"c", "d"}, sub: []string{"d"}, unsub: []string{"*", "b"}, sent: true},
	}
	for i, s := range steps {
		n := len(f.sent)
		if err := d.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResourceNames: s.names}); err != nil {
			t.Fatal(err)
		}
		if got := len(f.sent) > n; got != s.sent {
			t.Fatalf("step %d (%v): sent = %v, want %v", i, s.names, got, s.sent)
		}
		if !s.sent {
			continue
		}
		r := f.sent[len(f.sent)-1]
		if !slices.Equal(r.GetResourceNamesSubscribe(), s.sub) || !slices.Equal(r.GetResourceNamesUnsubscribe(), s.unsub) {
			t.Errorf("step %d (%v): subscribe %v unsubscribe %v, want %v and %v", i, s.names,
				r.GetResourceNamesSubscribe(), r.GetResourceNamesUnsubscribe(), s.sub, s.unsub)
		}
	}
}

// Deltas build the full set; only an ACKed set is announced on the next
// stream, and a resource no longer subscribed leaves the set.
func TestDeltaUpstreamSetsAndVerdicts(t *testing.T) {
	const typ = resourcev3.ListenerType
	state := newDeltaState()
	d, f := openFake(t, state)
	if err := d.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ}); err != nil {
		t.Fatal(err)
	}
	f.in = []*discoveryv3.DeltaDiscoveryResponse{
		{TypeUrl: typ, Nonce: "n1", SystemVersionInfo: "1", Resources: []*discoveryv3.Resource{
			{Name: "a", Version: "a1", Resource: body("a1")}, {Name: "b", Version: "b1", Resource: body("b1")}}},
		{TypeUrl: typ, Nonce: "n2", SystemVersionInfo: "2", Resources: []*discoveryv3.Resource{
			{Name: "c", Version: "c2", Resource: body("c2")}}, RemovedResources: []string{"a"}},
		{TypeUrl: typ, Nonce: "n3", Resources: []*discoveryv3.Resource{
			{Name: "b", Version: "b3", Resource: body("b3")}}},
	}
	names := func(r *discoveryv3.DiscoveryResponse) []string {
		var out []string
		for _, a := range r.GetResources() {
			var s wrapperspb.StringValue
			if err := a.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s.GetValue())
		}
		return out
	}
	r1, _ := d.Recv()
	if got := names(r1); !slices.Equal(got, []string{"a1", "b1"}) || r1.GetVersionInfo() != "1" || r1.GetNonce() != "n1" {
		t.Fatalf("first set = %v version %q nonce %q", got, r1.GetVersionInfo(), r1.GetNonce())
	}
	if err := d.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResponseNonce: "n1", VersionInfo: "1"}); err != nil {
		t.Fatal(err)
	}
	if ack := f.sent[len(f.sent)-1]; ack.GetResponseNonce() != "n1" || ack.GetErrorDetail() != nil {
		t.Errorf("ACK = %v, want nonce n1 without error", ack)
	}
	r2, _ := d.Recv()
	if got := names(r2); !slices.Equal(got, []string{"b1", "c2"}) {
		t.Fatalf("second set = %v, want a removed and c added", got)
	}
	// Envoy rejects version 2.
	if err := d.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResponseNonce: "n2", VersionInfo: "1", ErrorDetail: &status.Status{Message: "bad"}}); err != nil {
		t.Fatal(err)
	}
	if nack := f.sent[len(f.sent)-1]; nack.GetResponseNonce() != "n2" || nack.GetErrorDetail().GetMessage() != "bad" {
		t.Errorf("NACK = %v, want nonce n2 with the error", nack)
	}
	// A stale nonce again: nothing goes up.
	n := len(f.sent)
	if err := d.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResponseNonce: "n2"}); err != nil {
		t.Fatal(err)
	}
	if len(f.sent) != n {
		t.Errorf("a repeated verdict went up: %v", f.sent[n:])
	}
	// The next delta applies to what the server takes us to hold (the
	// rejected set); without a system version the set names it.
	r3, _ := d.Recv()
	if got := names(r3); !slices.Equal(got, []string{"b3", "c2"}) || r3.GetVersionInfo() == "" {
		t.Fatalf("third set = %v version %q, want b3 c2 and a version", got, r3.GetVersionInfo())
	}

	// A new stream announces the accepted set (version 1), not the
	// rejected one nor the unanswered one.
	d2, f2 := openFake(t, state)
	if err := d2.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ}); err != nil {
		t.Fatal(err)
	}
	iv := f2.sent[0].GetInitialResourceVersions()
	if len(iv) != 2 || iv["a"] != "a1" || iv["b"] != "b1" {
		t.Errorf("initial_resource_versions = %v, want a:a1 b:b1", iv)
	}
	f2.in = []*discoveryv3.DeltaDiscoveryResponse{{TypeUrl: typ, Nonce: "m1", SystemVersionInfo: "4", RemovedResources: []string{"b"}}}
	r4, _ := d2.Recv()
	if got := names(r4); !slices.Equal(got, []string{"a1"}) {
		t.Errorf("set after the reconnect = %v, want the accepted a1 (b removed)", got)
	}
	// A named subscription announces only the names it asks for.
	d3, f3 := openFake(t, state)
	if err := d3.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResourceNames: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	if iv := f3.sent[0].GetInitialResourceVersions(); len(iv) != 1 || iv["a"] != "a1" {
		t.Errorf("initial_resource_versions for [a] = %v, want a:a1", iv)
	}
}

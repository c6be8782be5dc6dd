package xdsproxy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// deltaAdapter lets an Envoy that speaks incremental xDS (delta ADS) use the
// proxy, whose state is state of the world (a delta upstream is turned
// into full sets by deltaUpstream): Envoy's
// delta requests become the SotW requests the proxy forwards (its
// subscriptions, and its ACK or NACK of a response by nonce), and each SotW
// response becomes the delta response of what changed since what Envoy
// accepted. One adapter per delta stream.
type deltaAdapter struct {
	mu sync.Mutex
	// subs is the subscription per type; wildcard types have a nil set.
	subs     map[string]map[string]bool
	wildcard map[string]bool
	// sent is what Envoy was last sent, per type (name → hash), acked
	// what it last accepted; pending holds, by nonce, what a response
	// would make it have, and its version.
	sent, acked map[string]map[string]string
	pending     map[string]pendingDelta
	version     map[string]string // last ACKed version per type
}

type pendingDelta struct {
	typ, version string
	have         map[string]string
}

func newDeltaAdapter() *deltaAdapter {
	return &deltaAdapter{
		subs: map[string]map[string]bool{}, wildcard: map[string]bool{},
		sent: map[string]map[string]string{}, acked: map[string]map[string]string{},
		pending: map[string]pendingDelta{}, version: map[string]string{},
	}
}

// request turns a delta request into the SotW request that says the same.
func (a *deltaAdapter) request(req *discoveryv3.DeltaDiscoveryRequest) *discoveryv3.DiscoveryRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	typ := req.GetTypeUrl()
	set, known := a.subs[typ]
	if !known {
		// The first request of a type: no names (or "*") is a wildcard
		// subscription.
		set = map[string]bool{}
		a.subs[typ] = set
		if len(req.GetResourceNamesSubscribe()) == 0 {
			a.wildcard[typ] = true
		}
	}
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == "*" {
			a.wildcard[typ] = true
			continue
		}
		set[n] = true
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == "*" {
			delete(a.wildcard, typ)
			continue
		}
		delete(set, n)
		// Unsubscribed resources are gone from Envoy's view.
		delete(a.sent[typ], n)
		delete(a.acked[typ], n)
	}
	out := &discoveryv3.DiscoveryRequest{TypeUrl: typ, Node: req.GetNode(), ResponseNonce: req.GetResponseNonce(), ErrorDetail: req.GetErrorDetail()}
	if !a.wildcard[typ] {
		out.ResourceNames = make([]string, 0, len(set))
		for n := range set {
			out.ResourceNames = append(out.ResourceNames, n)
		}
		slices.Sort(out.ResourceNames)
	}
	if n := req.GetResponseNonce(); n != "" {
		if pd, ok := a.pending[n]; ok && pd.typ == typ {
			delete(a.pending, n)
			if req.GetErrorDetail() == nil {
				a.acked[typ], a.version[typ] = pd.have, pd.version
			} else {
				// Envoy kept what it had: the next response is
				// diffed against that.
				a.sent[typ] = a.acked[typ]
			}
		}
	}
	out.VersionInfo = a.version[typ]
	return out
}

// response is the delta response that brings Envoy from what it was sent
// to resp's resources.
func (a *deltaAdapter) response(resp *discoveryv3.DiscoveryResponse) (*discoveryv3.DeltaDiscoveryResponse, error) {
	typ := resp.GetTypeUrl()
	cur := make(map[string]*anypb.Any, len(resp.GetResources()))
	hashes := make(map[string]string, len(resp.GetResources()))
	for i, r := range resp.GetResources() {
		m, err := r.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("decode %s resource %d for a delta stream: %w", typ, i, err)
		}
		name := cache.GetResourceName(m)
		sum := sha256.Sum256(r.GetValue())
		cur[name], hashes[name] = r, hex.EncodeToString(sum[:8])
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	out := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: resp.GetNonce(), SystemVersionInfo: resp.GetVersionInfo()}
	had := a.sent[typ]
	names := make([]string, 0, len(cur))
	for n := range cur {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if had[n] != hashes[n] {
			out.Resources = append(out.Resources, &discoveryv3.Resource{Name: n, Version: hashes[n], Resource: cur[n]})
		}
	}
	for n := range had {
		if _, ok := cur[n]; !ok {
			out.RemovedResources = append(out.RemovedResources, n)
		}
	}
	slices.Sort(out.RemovedResources)
	a.sent[typ] = hashes
	a.pending[resp.GetNonce()] = pendingDelta{typ: typ, version: resp.GetVersionInfo(), have: hashes}
	return out, nil
}

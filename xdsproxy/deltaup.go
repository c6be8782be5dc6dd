package xdsproxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/shunt-dev/shunt/xdsclient"
)

// An incremental (delta) upstream: the control plane sends per resource
// what was added, changed or removed; the proxy's loop, its downstreams and
// shunt's translation all work on full per-type sets (state of the world).
// deltaUpstream keeps, per type, the set the deltas build up and hands the
// loop each response as the full set, and turns the loop's SotW requests
// back into delta ones: subscription changes as subscribe/unsubscribe
// lists, verdicts by nonce. A delta Envoy downstream gets the change again
// as a delta from deltaAdapter.

// deltaRes is one resource as the control plane versioned it.
type deltaRes struct {
	version string
	body    *anypb.Any
}

// deltaState outlives the upstream streams: per type, the resources a
// downstream accepted, which a new stream announces as its
// initial_resource_versions so that the control plane sends only what
// changed (and removals) instead of everything again. A version that was
// NACKed never enters it.
type deltaState struct {
	mu       sync.Mutex
	accepted map[string]map[string]deltaRes
}

func newDeltaState() *deltaState {
	return &deltaState{accepted: map[string]map[string]deltaRes{}}
}

// wrap opens open's delta stream and presents it as a SotW one.
func (s *deltaState) wrap(open func(context.Context) (xdsclient.DeltaADSStream, error)) func(context.Context) (xdsclient.ADSStream, error) {
	return func(ctx context.Context) (xdsclient.ADSStream, error) {
		st, err := open(ctx)
		if err != nil {
			return nil, err
		}
		return &deltaUpstream{state: s, stream: st, subs: map[string]*deltaSub{},
			have: map[string]map[string]deltaRes{}, pending: map[string]pendingUp{}}, nil
	}
}

// deltaUpstream is one delta stream. Send runs on the proxy's loop and Recv
// on the stream's reader, hence the lock.
type deltaUpstream struct {
	state  *deltaState
	stream xdsclient.DeltaADSStream

	mu sync.Mutex
	// subs is the subscription as sent on this stream, per type.
	subs map[string]*deltaSub
	// have is, per type, what the control plane takes this client to
	// hold: the base the next delta applies to. After a NACK it is still
	// the rejected set, as for the server, which sends the next change
	// relative to that.
	have map[string]map[string]deltaRes
	// pending is the newest response of a type awaiting its verdict: the
	// loop forwards verdicts only for that one.
	pending map[string]pendingUp
}

type deltaSub struct {
	wildcard bool
	names    map[string]bool
}

type pendingUp struct {
	nonce string
	set   map[string]deltaRes
}

// Send turns a SotW request (empty resource_names: wildcard) into the delta
// request that says the same, or into nothing when it repeats the
// subscription without a verdict.
func (d *deltaUpstream) Send(req *request) error {
	d.mu.Lock()
	out, send := d.translate(req)
	d.mu.Unlock()
	if !send {
		return nil
	}
	return d.stream.Send(out)
}

func (d *deltaUpstream) translate(req *request) (*discoveryv3.DeltaDiscoveryRequest, bool) {
	typ := req.GetTypeUrl()
	out := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, Node: req.GetNode()}
	wild := len(req.GetResourceNames()) == 0
	want := map[string]bool{}
	for _, n := range req.GetResourceNames() {
		want[n] = true
	}
	send := out.Node != nil
	sub, known := d.subs[typ]
	if !known {
		// The type's first request on this stream: no names is the
		// wildcard, and what was accepted before is announced.
		sub = &deltaSub{wildcard: wild, names: want}
		d.subs[typ] = sub
		if !wild {
			out.ResourceNamesSubscribe = sortedKeys(want)
		}
		d.state.mu.Lock()
		acc := d.state.accepted[typ]
		d.state.mu.Unlock()
		have := map[string]deltaRes{}
		for n, r := range acc {
			if wild || want[n] {
				have[n] = r
			}
		}
		d.have[typ] = have
		if len(have) > 0 {
			out.InitialResourceVersions = make(map[string]string, len(have))
			for n, r := range have {
				out.InitialResourceVersions[n] = r.version
			}
		}
		send = true
	} else {
		if wild && !sub.wildcard {
			out.ResourceNamesSubscribe = append(out.ResourceNamesSubscribe, "*")
		}
		if !wild {
			if sub.wildcard {
				out.ResourceNamesUnsubscribe = append(out.ResourceNamesUnsubscribe, "*")
			}
			for _, n := range sortedKeys(want) {
				if !sub.names[n] {
					out.ResourceNamesSubscribe = append(out.ResourceNamesSubscribe, n)
				}
			}
			for _, n := range sortedKeys(sub.names) {
				if !want[n] {
					out.ResourceNamesUnsubscribe = append(out.ResourceNamesUnsubscribe, n)
				}
			}
			sub.names = want
			// The server says nothing more of what is no longer
			// subscribed: it leaves the set here.
			for n := range d.have[typ] {
				if !want[n] {
					delete(d.have[typ], n)
				}
			}
		}
		sub.wildcard = wild
		send = send || len(out.ResourceNamesSubscribe) > 0 || len(out.ResourceNamesUnsubscribe) > 0
	}
	if n := req.GetResponseNonce(); n != "" {
		if p, ok := d.pending[typ]; ok && p.nonce == n {
			delete(d.pending, typ)
			out.ResponseNonce, out.ErrorDetail = n, req.GetErrorDetail()
			if req.GetErrorDetail() == nil {
				d.state.mu.Lock()
				d.state.accepted[typ] = p.set
				d.state.mu.Unlock()
			}
			send = true
		}
	}
	return out, send
}

// Recv applies the next delta response to its type's set and returns the
// set whole, with the response's nonce.
func (d *deltaUpstream) Recv() (*response, error) {
	r, err := d.stream.Recv()
	if err != nil {
		return nil, err
	}
	typ := r.GetTypeUrl()
	d.mu.Lock()
	next := maps.Clone(d.have[typ])
	if next == nil {
		next = map[string]deltaRes{}
	}
	for _, res := range r.GetResources() {
		if res.GetResource() == nil {
			// A name the server knows no resource for.
			delete(next, res.GetName())
			continue
		}
		next[res.GetName()] = deltaRes{version: res.GetVersion(), body: res.GetResource()}
	}
	for _, n := range r.GetRemovedResources() {
		delete(next, n)
	}
	d.have[typ] = next
	d.pending[typ] = pendingUp{nonce: r.GetNonce(), set: next}
	d.mu.Unlock()

	names := sortedKeys(next)
	out := &response{TypeUrl: typ, Nonce: r.GetNonce(), VersionInfo: r.GetSystemVersionInfo()}
	h := sha256.New()
	for _, n := range names {
		out.Resources = append(out.Resources, next[n].body)
		h.Write([]byte(n + "\x00" + next[n].version + "\x00"))
	}
	if out.VersionInfo == "" {
		// The system version is optional; the set's resource versions
		// then name it.
		out.VersionInfo = "delta-" + hex.EncodeToString(h.Sum(nil)[:8])
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

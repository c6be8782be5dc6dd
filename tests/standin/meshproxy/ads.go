package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"
	"sort"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// sub is the state of one type on the ADS stream.
type sub struct {
	version, nonce string
	names          []string // nil: wildcard
	sent           bool
}

// subscribe keeps the ADS stream open, reconnecting as Envoy does.
func (p *proxy) subscribe(ctx context.Context) {
	for ctx.Err() == nil {
		err := p.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		log.Printf("xds: %v; reconnecting", err)
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (p *proxy) stream(ctx context.Context) error {
	cc, err := grpc.NewClient(p.xdsTarget, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	subs := map[string]*sub{resource.ClusterType: {}, resource.ListenerType: {}}
	nodeSent := false
	send := func(typ string, errDetail error, nonce string) error {
		s := subs[typ]
		req := &discoveryv3.DiscoveryRequest{TypeUrl: typ, VersionInfo: s.version, ResponseNonce: nonce, ResourceNames: s.names}
		if !nodeSent || !p.nodeOnce {
			req.Node = p.node
			nodeSent = true
		}
		if errDetail != nil {
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: errDetail.Error()}
		}
		s.sent = true
		return st.Send(req)
	}
	// Envoy's order: clusters, then listeners.
	for _, typ := range []string{resource.ClusterType, resource.ListenerType} {
		if err := send(typ, nil, ""); err != nil {
			return err
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		typ := resp.GetTypeUrl()
		s := subs[typ]
		if s == nil {
			return fmt.Errorf("response of type %s, never requested", typ)
		}
		next, err := p.decode(resp)
		if err == nil {
			err = p.apply(next, typ)
		}
		if err != nil {
			log.Printf("xds: NACK version %s of %s: %v", resp.GetVersionInfo(), typ, err)
			if err := send(typ, err, resp.GetNonce()); err != nil {
				return err
			}
			continue
		}
		s.version = resp.GetVersionInfo()
		if err := send(typ, nil, resp.GetNonce()); err != nil {
			return err
		}
		// Clusters and listeners name the endpoints and secrets to
		// subscribe to, as Envoy does.
		for t, names := range map[string][]string{resource.EndpointType: p.edsNames(), resource.SecretType: p.sdsNames()} {
			cur := subs[t]
			if cur == nil {
				if len(names) == 0 {
					continue
				}
				cur = &sub{}
				subs[t] = cur
			}
			if cur.sent && slices.Equal(cur.names, names) {
				continue
			}
			cur.names = names
			if names == nil {
				cur.names = []string{}
			}
			if err := send(t, nil, cur.nonce); err != nil {
				return err
			}
		}
		s.nonce = resp.GetNonce()
		p.logState(resp.GetVersionInfo(), typ)
	}
}

// decode checks every resource against the fields the double implements
// and returns the state with this type replaced.
func (p *proxy) decode(resp *discoveryv3.DiscoveryResponse) (xdsState, error) {
	p.mu.Lock()
	next := p.state.clone()
	p.mu.Unlock()
	for i, a := range resp.GetResources() {
		if a.GetTypeUrl() != resp.GetTypeUrl() {
			return xdsState{}, fmt.Errorf("resources[%d]: type %s in a %s response", i, a.GetTypeUrl(), resp.GetTypeUrl())
		}
	}
	switch resp.GetTypeUrl() {
	case resource.ListenerType:
		next.listeners = map[string]*listenerv3.Listener{}
		for _, a := range resp.GetResources() {
			m := &listenerv3.Listener{}
			if err := unpack(a.GetValue(), m, "listener"); err != nil {
				return xdsState{}, err
			}
			next.listeners[m.GetName()] = m
		}
	case resource.ClusterType:
		next.clusters = map[string]*clusterv3.Cluster{}
		for _, a := range resp.GetResources() {
			m := &clusterv3.Cluster{}
			if err := unpack(a.GetValue(), m, "cluster"); err != nil {
				return xdsState{}, err
			}
			next.clusters[m.GetName()] = m
		}
	case resource.EndpointType:
		next.cla = map[string]*endpointv3.ClusterLoadAssignment{}
		for _, a := range resp.GetResources() {
			m := &endpointv3.ClusterLoadAssignment{}
			if err := unpack(a.GetValue(), m, "cluster_load_assignment"); err != nil {
				return xdsState{}, err
			}
			next.cla[m.GetClusterName()] = m
		}
	case resource.SecretType:
		next.secrets = map[string]*tlsv3.Secret{}
		for _, a := range resp.GetResources() {
			m := &tlsv3.Secret{}
			if err := unpack(a.GetValue(), m, "secret"); err != nil {
				return xdsState{}, err
			}
			next.secrets[m.GetName()] = m
		}
	default:
		return xdsState{}, fmt.Errorf("type %s not implemented", resp.GetTypeUrl())
	}
	return next, nil
}

func unpack(b []byte, m proto.Message, what string) error {
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	name := what
	if n, ok := m.(interface{ GetName() string }); ok {
		name = what + " " + n.GetName()
	}
	if err := checkFields(m, name, implemented); err != nil {
		return err
	}
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// apply builds the runtime from next and opens its sockets; on error the
// previous state stays, as after an Envoy NACK.
func (p *proxy) apply(next xdsState, typ string) error {
	rt, err := build(next)
	if err != nil {
		return err
	}
	if err := p.reconcileBinds(rt); err != nil {
		return err
	}
	p.mu.Lock()
	p.state = next
	switch typ {
	case resource.ListenerType:
		p.haveLDS = true
	case resource.ClusterType:
		p.haveCDS = true
	}
	p.mu.Unlock()
	p.rt.Store(rt)
	return nil
}

func (p *proxy) edsNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, c := range p.state.clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			n := c.GetEdsClusterConfig().GetServiceName()
			if n == "" {
				n = c.GetName()
			}
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

func (p *proxy) sdsNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := map[string]bool{}
	add := func(m proto.Message) {
		collectSDS(m, set)
	}
	for _, c := range p.state.clusters {
		add(c)
	}
	for _, l := range p.state.listeners {
		add(l)
	}
	var out []string
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// collectSDS finds the SDS secret names inside a resource's TLS contexts.
func collectSDS(m proto.Message, set map[string]bool) {
	var ctxs []*tlsv3.CommonTlsContext
	switch r := m.(type) {
	case *clusterv3.Cluster:
		if ts := r.GetTransportSocket(); ts != nil {
			u := &tlsv3.UpstreamTlsContext{}
			if ts.GetTypedConfig().UnmarshalTo(u) == nil {
				ctxs = append(ctxs, u.GetCommonTlsContext())
			}
		}
	case *listenerv3.Listener:
		fcs := append([]*listenerv3.FilterChain{}, r.GetFilterChains()...)
		if r.GetDefaultFilterChain() != nil {
			fcs = append(fcs, r.GetDefaultFilterChain())
		}
		for _, fc := range fcs {
			if ts := fc.GetTransportSocket(); ts != nil {
				d := &tlsv3.DownstreamTlsContext{}
				if ts.GetTypedConfig().UnmarshalTo(d) == nil {
					ctxs = append(ctxs, d.GetCommonTlsContext())
				}
			}
		}
	}
	for _, c := range ctxs {
		for _, s := range c.GetTlsCertificateSdsSecretConfigs() {
			set[s.GetName()] = true
		}
		if s := c.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); s != nil {
			set[s.GetName()] = true
		}
	}
}

func (p *proxy) logState(version, typ string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	missing := 0
	for _, n := range p.sdsNamesLocked() {
		if p.state.secrets[n] == nil {
			missing++
		}
	}
	log.Printf("xds: applied version %s of %s: %d listeners, %d clusters, %d secrets (%d awaited)", version, typ, len(p.state.listeners), len(p.state.clusters), len(p.state.secrets), missing)
	if p.haveCDS && p.haveLDS && missing == 0 && !p.ready {
		p.ready = true
		log.Printf("xds: ready")
	}
}

func (p *proxy) sdsNamesLocked() []string {
	set := map[string]bool{}
	for _, c := range p.state.clusters {
		collectSDS(c, set)
	}
	for _, l := range p.state.listeners {
		collectSDS(l, set)
	}
	var out []string
	for n := range set {
		out = append(out, n)
	}
	return out
}

var errNoADS = errors.New("bootstrap: dynamic_resources.ads_config is required (the double takes its configuration over ADS only)")

package main

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fcm is a filter chain match on a destination port (0: any), a server
// name ("": any) and a transport protocol ("": any).
func fcm(port uint32, sni, tp string) *listenerv3.FilterChainMatch {
	m := &listenerv3.FilterChainMatch{TransportProtocol: tp}
	if port != 0 {
		m.DestinationPort = wrapperspb.UInt32(port)
	}
	if sni != "" {
		m.ServerNames = []string{sni}
	}
	return m
}

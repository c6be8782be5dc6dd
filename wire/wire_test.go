package wire

import "testing"

func TestEgressPassthrough(t *testing.T) {
	for name, want := range map[string]bool{
		"outbound:passthrough":                              true,
		"outbound:passthrough:ipv4":                         true,
		"outbound:passthrough:ipv6":                         true,
		"self_transparentproxy_passthrough_outbound_ipv4":   true,
		"PassthroughCluster":                                true,
		"inbound:passthrough:ipv4":                          false,
		"inbound:passthrough:ipv6":                          false,
		"self_transparentproxy_passthrough_inbound_ipv4":    false,
		"self_transparentproxy_passthrough_dp_inbound_ipv6": false,
		"InboundPassthroughCluster":                         false,
		"InboundPassthroughClusterIpv4":                     false,
	} {
		if got := EgressPassthrough(name); got != want {
			t.Errorf("EgressPassthrough(%q) = %v, want %v", name, got, want)
		}
	}
}

package istio_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/shunt-dev/shunt/xdsclient"
)

// tableOf decodes the NameTable of an NDS response: host → IPs.
func tableOf(t testing.TB, r *discoveryv3.DiscoveryResponse) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, a := range r.GetResources() {
		if a.GetTypeUrl() != xdsclient.NameTableType {
			t.Fatalf("NDS resource of type %s", a.GetTypeUrl())
		}
		table, err := xdsclient.DecodeNameTable(a.GetValue())
		if err != nil {
			t.Fatal(err)
		}
		for h, info := range table {
			out[h] = append(out[h], info.IPs...)
		}
	}
	return out
}

// waitVIP reads NDS responses until host has an address, and returns them.
func waitVIP(t testing.TB, ch <-chan *discoveryv3.DiscoveryResponse, host string, d time.Duration) []string {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				t.Fatalf("istiod's NDS stream ended before %s had a VIP", host)
			}
			if ips := tableOf(t, r)[host]; len(ips) > 0 {
				for _, ip := range ips {
					if _, err := netip.ParseAddr(ip); err != nil {
						t.Fatalf("istiod gave %s the address %q", host, ip)
					}
				}
				slices.Sort(ips)
				return ips
			}
		case <-timer.C:
			t.Fatalf("istiod sent no VIP for %s within %v", host, d)
		}
	}
}

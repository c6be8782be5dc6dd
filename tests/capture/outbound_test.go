package capture_test

import (
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// backends are the iptables variants; engines adds the native nftables
// engine, for the behavioural tests every netfilter engine must pass.
var (
	backends = []string{"nft", "legacy"}
	engines  = append(append([]string(nil), backends...), nativeNftables)
)

func TestOutboundGoesThroughTheProxy(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			w.serveHTTP(8080)
			w.startProxies()
			w.install()

			if !w.fetch(appUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
				t.Errorf("IPv4 connection of uid %d did not pass through the proxy", appUID)
			}
			if !w.fetch(appUID, "http://[fd00:1::2]:8080/", "remote:8080", "[fd00:1::2]:8080") {
				t.Errorf("IPv6 connection of uid %d did not pass through the proxy", appUID)
			}
			// The proxy's own connections leave directly: were they
			// captured, the proxy would see (and log) them too.
			if w.fetch(proxyUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
				t.Errorf("the proxy's own IPv4 connection was captured")
			}
			if w.fetch(proxyUID, "http://[fd00:1::2]:8080/", "remote:8080", "[fd00:1::2]:8080") {
				t.Errorf("the proxy's own IPv6 connection was captured")
			}
		})
	}
}

func TestExclusionsBypassTheProxy(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			// A second link whose traffic is excluded by interface.
			side := newSideHost(t, w)
			w.serveHTTP(8080, 8081, 8082)
			testenv.ServeHTTP(t, side, "[::]:8080", "side:8080")
			w.startProxies()
			w.install(
				"--exclude-outbound-ports", "8081",
				"--exclude-outbound-cidrs", "10.1.0.3/32,fd00:1::3",
				"--exclude-outbound-ports-for-uids", "tcp:8082:1001",
				"--exclude-interfaces", w.sideDev,
			)
			cases := []struct {
				name    string
				uid     int
				url     string
				body    string
				dst     string
				proxied bool
			}{
				{"captured port", appUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080", true},
				{"excluded port", appUID, "http://10.1.0.2:8081/", "remote:8081", "10.1.0.2:8081", false},
				{"excluded port v6", appUID, "http://[fd00:1::2]:8081/", "remote:8081", "[fd00:1::2]:8081", false},
				{"excluded cidr", appUID, "http://10.1.0.3:8080/", "remote:8080", "10.1.0.3:8080", false},
				{"excluded cidr v6", appUID, "http://[fd00:1::3]:8080/", "remote:8080", "[fd00:1::3]:8080", false},
				{"excluded uid and port", 1001, "http://10.1.0.2:8082/", "remote:8082", "10.1.0.2:8082", false},
				{"uid excluded on another port only", 1001, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080", true},
				{"other uid on the uid-excluded port", appUID, "http://10.1.0.2:8082/", "remote:8082", "10.1.0.2:8082", true},
				{"excluded interface", appUID, "http://10.2.0.2:8080/", "side:8080", "10.2.0.2:8080", false},
				{"excluded interface v6", appUID, "http://[fd00:2::2]:8080/", "side:8080", "[fd00:2::2]:8080", false},
			}
			for _, c := range cases {
				if got := w.fetch(c.uid, c.url, c.body, c.dst); got != c.proxied {
					t.Errorf("%s: uid %d %s: proxied=%v, want %v", c.name, c.uid, c.url, got, c.proxied)
				}
			}
		})
	}
}

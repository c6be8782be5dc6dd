package capture_test

import (
	"testing"
)

// Include-only lists narrow capture: only these destinations, ports and
// inbound ports reach the proxy; exclusions still apply inside them.
func TestIncludeOnlyListsLimitCapture(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			w.serveHTTP(8080, 8081, 8082)
			w.startProxies()
			inboundListener(t, w.pod, "[::]:15006")
			serveApp(t, w, 8080, 9090)
			w.install(
				"--include-outbound-cidrs", "10.1.0.2/32,fd00:1::2",
				"--include-outbound-ports", "8080-8081",
				"--exclude-outbound-ports", "8081",
				"--include-inbound-ports", "8080",
			)
			cases := []struct {
				name    string
				url     string
				body    string
				dst     string
				proxied bool
			}{
				{"included cidr and port", "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080", true},
				{"included v6", "http://[fd00:1::2]:8080/", "remote:8080", "[fd00:1::2]:8080", true},
				{"included but excluded port", "http://10.1.0.2:8081/", "remote:8081", "10.1.0.2:8081", false},
				{"port not included", "http://10.1.0.2:8082/", "remote:8082", "10.1.0.2:8082", false},
				{"cidr not included", "http://10.1.0.3:8080/", "remote:8080", "10.1.0.3:8080", false},
				{"cidr not included v6", "http://[fd00:1::3]:8080/", "remote:8080", "[fd00:1::3]:8080", false},
			}
			for _, c := range cases {
				if got := w.fetch(appUID, c.url, c.body, c.dst); got != c.proxied {
					t.Errorf("%s: %s: proxied=%v, want %v", c.name, c.url, got, c.proxied)
				}
			}
			for url, want := range map[string]string{
				"http://10.1.0.1:8080/":    "inbound-proxy orig=10.1.0.1:8080",
				"http://[fd00:1::1]:8080/": "inbound-proxy orig=[fd00:1::1]:8080",
				"http://10.1.0.1:9090/":    "app:9090",
				"http://[fd00:1::1]:9090/": "app:9090",
			} {
				if got, err := curlFrom(w.remote, url); err != nil || got != want {
					t.Errorf("remote GET %s = %q, %v; want %q", url, got, err, want)
				}
			}
		})
	}
}

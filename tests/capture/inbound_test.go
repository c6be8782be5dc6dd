package capture_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect/origdst"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// inboundListener stands in for the proxy's inbound listener: it answers
// HTTP with the original destination it read from the redirected socket.
func inboundListener(t *testing.T, n *testenv.Netns, addr string) {
	t.Helper()
	testenv.ServeTCP(t, n, addr, func(c *net.TCPConn) {
		dst, err := origdst.Lookup(c)
		body := "inbound-proxy orig=" + dst.String()
		if err != nil {
			body = "inbound-proxy error=" + err.Error()
		}
		testenv.ReplyHTTP(c, body)
	})
}

// curlFrom fetches url from namespace n as root.
func curlFrom(n *testenv.Netns, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Command(ctx, "curl", "-sS", "--max-time", "4", url).CombinedOutput()
	return string(out), err
}

func TestInboundReachesTheProxyWithTheOriginalDestination(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			inboundListener(t, w.pod, "[::]:15006")
			testenv.ServeHTTP(t, w.pod, "[::]:9090", "app:9090")
			testenv.ServeHTTP(t, w.pod, "[::]:8080", "app:8080")
			w.install("--exclude-inbound-ports", "9090")

			cases := []struct{ url, want string }{
				{"http://10.1.0.1:8080/", "inbound-proxy orig=10.1.0.1:8080"},
				{"http://[fd00:1::1]:8080/", "inbound-proxy orig=[fd00:1::1]:8080"},
				{"http://10.1.0.1:9090/", "app:9090"},
				{"http://[fd00:1::1]:9090/", "app:9090"},
			}
			for _, c := range cases {
				got, err := curlFrom(w.remote, c.url)
				if err != nil || got != c.want {
					t.Errorf("remote GET %s = %q, %v; want %q", c.url, got, err, c.want)
				}
			}
			// Inside the pod, applications reach each other over loopback
			// without the proxy.
			if got, err := w.curl(appUID, "http://127.0.0.1:8080/"); err != nil || got != "app:8080" {
				t.Errorf("local GET = %q, %v; want app:8080", got, err)
			}
		})
	}
}

func TestInboundCanBeDisabled(t *testing.T) {
	w := newWorld(t, "nft")
	inboundListener(t, w.pod, "[::]:15006")
	testenv.ServeHTTP(t, w.pod, "[::]:8080", "app:8080")
	w.install("--no-inbound")
	if got, err := curlFrom(w.remote, "http://10.1.0.1:8080/"); err != nil || got != "app:8080" {
		t.Errorf("remote GET with --no-inbound = %q, %v; want app:8080", got, err)
	}
	if save := w.save(false); strings.Contains(save, "SHUNT_INBOUND") {
		t.Errorf("--no-inbound still installed inbound chains:\n%s", save)
	}
}

func TestProxyToOwnAddressGoesToInbound(t *testing.T) {
	w := newWorld(t, "nft")
	inboundListener(t, w.pod, "[::]:15006")
	testenv.ServeHTTP(t, w.pod, "[::]:8080", "app:8080")
	w.install()
	// The proxy reaching the workload's own address is an inbound call.
	got, err := w.curl(proxyUID, "http://10.1.0.1:8080/")
	if err != nil || got != "inbound-proxy orig=10.1.0.1:8080" {
		t.Errorf("proxy GET own address = %q, %v; want the inbound listener", got, err)
	}
	// ... but 127.0.0.1 is the application itself.
	if got, err := w.curl(proxyUID, "http://127.0.0.1:8080/"); err != nil || got != "app:8080" {
		t.Errorf("proxy GET 127.0.0.1 = %q, %v; want app:8080", got, err)
	}
}

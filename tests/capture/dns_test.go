package capture_test

import (
	"testing"
)

func TestDNSGoesToTheInterceptor(t *testing.T) {
	for _, backend := range engines {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t, backend)
			// shunt's interceptor stand-in in the pod; real servers on
			// the remote, one configured in resolv.conf and one not.
			serveDNS(t, w.pod, "127.0.0.1:15053", "192.0.2.53")
			serveDNS(t, w.pod, "[::1]:15053", "192.0.2.53")
			serveDNS(t, w.remote, "10.1.0.2:53", "198.51.100.2")
			serveDNS(t, w.remote, "[fd00:1::2]:53", "198.51.100.2")
			serveDNS(t, w.remote, "10.1.0.3:53", "198.51.100.3")
			w.install()

			cases := []struct {
				name string
				uid  int
				args []string
				want string
			}{
				{"udp to resolv.conf server", appUID, []string{"@10.1.0.2", "example.com"}, "192.0.2.53"},
				{"tcp to resolv.conf server", appUID, []string{"+tcp", "@10.1.0.2", "example.com"}, "192.0.2.53"},
				{"udp to IPv6 resolv.conf server", appUID, []string{"@fd00:1::2", "example.com"}, "192.0.2.53"},
				{"tcp to IPv6 resolv.conf server", appUID, []string{"+tcp", "@fd00:1::2", "example.com"}, "192.0.2.53"},
				{"other server is left alone", appUID, []string{"@10.1.0.3", "example.com"}, "198.51.100.3"},
				{"proxy's own query is left alone", proxyUID, []string{"@10.1.0.2", "example.com"}, "198.51.100.2"},
				{"proxy's own tcp query is left alone", proxyUID, []string{"+tcp", "@10.1.0.2", "example.com"}, "198.51.100.2"},
			}
			for _, c := range cases {
				if got := w.dig(c.uid, c.args...); got != c.want {
					t.Errorf("%s: dig %v as uid %d = %q, want %q", c.name, c.args, c.uid, got, c.want)
				}
			}
		})
	}
}

func TestRedirectAllDNS(t *testing.T) {
	w := newWorld(t, "nft")
	serveDNS(t, w.pod, "127.0.0.1:15053", "192.0.2.53")
	serveDNS(t, w.remote, "10.1.0.3:53", "198.51.100.3")
	w.install("--redirect-all-dns")
	for _, args := range [][]string{{"@10.1.0.3", "example.com"}, {"+tcp", "@10.1.0.3", "example.com"}} {
		if got := w.dig(appUID, args...); got != "192.0.2.53" {
			t.Errorf("dig %v = %q, want the interceptor's 192.0.2.53", args, got)
		}
	}
}

func TestNoDNS(t *testing.T) {
	w := newWorld(t, "nft")
	serveDNS(t, w.pod, "127.0.0.1:15053", "192.0.2.53")
	serveDNS(t, w.remote, "10.1.0.2:53", "198.51.100.2")
	w.install("--no-dns")
	if got := w.dig(appUID, "@10.1.0.2", "example.com"); got != "198.51.100.2" {
		t.Errorf("dig with --no-dns = %q, want the real server's 198.51.100.2", got)
	}
}

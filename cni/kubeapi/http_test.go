package kubeapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The plugin's HTTP client against net/http's server: the two requests of a
// pod share one TLS connection, and every way the server can frame a body
// is read.
func TestOneConnectionForThePodAndItsNamespace(t *testing.T) {
	var conns atomic.Int32
	srv := fakeAPIWith(t, func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	})
	if _, err := PodLookup(context.Background(), writeKubeconfig(t, srv, "    token: tok-1"), "apps", "web-1"); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for two requests, want 1", n)
	}
}

// bodyServer answers every request with the pod, framed by frame.
func bodyServer(t *testing.T, tlsOn bool, frame func(w http.ResponseWriter, body string)) *httptest.Server {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := `{"metadata":{"annotations":{"shunt.dev/capture":"true"},"labels":{"l":"v"}},"spec":{"hostNetwork":true}}`
		frame(w, body)
	})
	srv := httptest.NewUnstartedServer(h)
	if tlsOn {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv
}

func TestBodyFraming(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tls   bool
		frame func(w http.ResponseWriter, body string)
	}{
		{"content-length", true, func(w http.ResponseWriter, body string) {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			fmt.Fprint(w, body)
		}},
		{"chunked", true, func(w http.ResponseWriter, body string) {
			for i := 0; i < len(body); i += 7 {
				fmt.Fprint(w, body[i:min(i+7, len(body))])
				w.(http.Flusher).Flush()
			}
		}},
		{"close-delimited", true, func(w http.ResponseWriter, body string) {
			conn, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				panic(err)
			}
			defer conn.Close()
			fmt.Fprintf(brw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n%s", body)
			brw.Flush()
		}},
		{"interim response first, plain http", false, func(w http.ResponseWriter, body string) {
			w.WriteHeader(http.StatusEarlyHints)
			fmt.Fprint(w, body)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := bodyServer(t, tc.tls, tc.frame)
			var kc string
			if tc.tls {
				kc = writeKubeconfig(t, srv, "    token: tok-1")
			} else {
				kc = filepath.Join(t.TempDir(), "kubeconfig")
				cfg := "clusters: [{name: c, cluster: {server: \"" + srv.URL + "\"}}]\nusers: [{name: u, user: {token: tok-1}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
				if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			ps, err := PodLookup(context.Background(), kc, "apps", "web-1")
			if err != nil {
				t.Fatal(err)
			}
			if ps.PodAnnotations["shunt.dev/capture"] != "true" || ps.NamespaceLabels["l"] != "v" || !ps.HostNetwork {
				t.Fatalf("settings = %+v", ps)
			}
		})
	}
}

func TestBasicAuth(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "admin" || p != "s3cr:t" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"metadata":{}}`)
	}))
	t.Cleanup(srv.Close)
	if _, err := PodLookup(context.Background(), writeKubeconfig(t, srv, "    username: admin\n    password: \"s3cr:t\""), "apps", "web-1"); err != nil {
		t.Fatal(err)
	}
}

// A kept connection the server closed while idle is replaced, once.
func TestIdleConnectionClosedByTheServer(t *testing.T) {
	var closed atomic.Int32
	srv := fakeAPIWith(t, func(c net.Conn, s http.ConnState) {
		if s == http.StateIdle {
			closed.Add(1)
			c.Close()
		}
	})
	if _, err := PodLookup(context.Background(), writeKubeconfig(t, srv, "    token: tok-1"), "apps", "web-1"); err != nil {
		t.Fatal(err)
	}
	if closed.Load() == 0 {
		t.Error("the server closed no idle connection: the test proves nothing")
	}
}

func TestMalformedAnswersAreErrors(t *testing.T) {
	for _, tc := range []struct{ name, answer, want string }{
		{"not http", "SSH-2.0-OpenSSH\r\n", "not an HTTP/1 status line"},
		{"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", "unexpected EOF"},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"},
		{"gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"},
		{"too large", fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", maxBody+1), "larger than"},
		{"header without colon", "HTTP/1.1 200 OK\r\nbroken\r\n\r\n", "malformed header line"},
		// A fresh connection closed at once is an error, not a retry.
		{"closed without an answer", "", "EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						br := bufio.NewReader(c)
						for {
							l, err := br.ReadString('\n')
							if err != nil || l == "\r\n" {
								break
							}
						}
						fmt.Fprint(c, tc.answer)
					}()
				}
			}()
			c := &Client{server: mustURL(t, "http://"+ln.Addr().String())}
			_, err = c.PodSettings(context.Background(), "apps", "web-1")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q in it", err, tc.want)
			}
		})
	}
}

// A server that never answers is given up on when the context ends.
func TestContextEndsARequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	c := &Client{server: mustURL(t, "http://"+ln.Addr().String())}
	start := time.Now()
	_, err = c.PodSettings(ctx, "apps", "web-1")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %v", d)
	}
}

func TestTokenWithALineBreakIsRefused(t *testing.T) {
	srv := fakeAPI(t)
	kc := writeKubeconfig(t, srv, "    tokenFile: token")
	if err := os.WriteFile(filepath.Join(filepath.Dir(kc), "token"), []byte("tok-1\r\nX-Injected: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := PodLookup(context.Background(), kc, "apps", "web-1"); err == nil || !strings.Contains(err.Error(), "token: contains a control character") {
		t.Fatalf("err = %v, want a refusal of the token", err)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

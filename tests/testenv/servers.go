package testenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// StartHAProxy runs HAProxy as the proxy stand-in inside n, as uid:uid,
// listening on listen (127.0.0.1:PORT) and forwarding each connection to
// its original destination (server 0.0.0.0:0 reads SO_ORIGINAL_DST). It logs
// one line per connection, "haproxy CLIENT -> DESTINATION", which tests
// count to tell a captured connection from one that bypassed the proxy.
// HAProxy reads the original destination of IPv4 connections only.
func StartHAProxy(t testing.TB, n *Netns, uid int, listen string) *Process {
	t.Helper()
	RequireBinary(t, "haproxy")
	// The proxy runs as its own user and must read its configuration.
	cfg := filepath.Join(ReadableTempDir(t), "haproxy.cfg")
	conf := fmt.Sprintf(`global
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 2s
  timeout client 10s
  timeout server 10s
  log-format "haproxy %%ci:%%cp -> %%si:%%sp"
frontend outbound
  bind %s
  default_backend original_destination
backend original_destination
  server s 0.0.0.0:0
`, listen)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := n.Start(n.CommandAs(context.Background(), uid, uid, "haproxy", "-f", cfg, "-db"))
	WaitListening(t, n, p.Output, listen)
	return p
}

// WaitListening waits until something listens on each address inside n.
// It looks with ss instead of connecting: a connection to a proxy that was
// not redirected would make the proxy forward to itself.
func WaitListening(t testing.TB, n *Netns, logs func() string, addrs ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := n.Run("ss", "-Hltn")
		missing := ""
		for _, a := range addrs {
			if !strings.Contains(out, a+" ") {
				missing = a
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never listened in %s:\n%s\nlogs:\n%s", missing, n.Name(), out, logs())
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// ServeHTTP answers every request on addr inside n with body, so a test
// knows which server a connection reached. The socket is opened inside
// the namespace by the test process; it stops when the test ends.
func ServeHTTP(t testing.TB, n *Netns, addr, body string) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, n.Name(), err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(rw, body)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// GetHTTP GETs http://addr+path with curl inside n (an admin endpoint,
// 3 s at most) and returns the status code and the body.
func (n *Netns) GetHTTP(addr, path string) (string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	out, _ := n.Command(ctx, "curl", "-s", "-w", "\n%{http_code}", "http://"+addr+path).Output()
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndex(s, "\n")
	if i < 0 {
		return s, ""
	}
	return s[i+1:], s[:i]
}

// ServeTCP accepts TCP connections on addr inside n until the test ends and
// gives each to handle on a goroutine of its own, closing it after.
func ServeTCP(t testing.TB, n *Netns, addr string, handle func(c *net.TCPConn)) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, n.Name(), err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c *net.TCPConn) {
				defer c.Close()
				handle(c)
			}(c.(*net.TCPConn))
		}
	}()
}

// ReplyHTTP reads one request from c (within 5 s) and answers it with body.
func ReplyHTTP(c net.Conn, body string) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	_, _ = c.Read(buf)
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

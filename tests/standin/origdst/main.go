// Command origdst is a test stand-in for the mesh proxy: it accepts
// connections that capture redirected to it, reads their original
// destination with SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6), and
// forwards to it, printing one line per connection. The tests run it as the
// proxy's UID, where HAProxy cannot serve: HAProxy reads the original
// destination of IPv4 connections only.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/shunt-dev/shunt/redirect/origdst"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:15001,[::1]:15001", "comma-separated addresses to listen on")
	flag.Parse()
	var mu sync.Mutex
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	for _, addr := range strings.Split(*listen, ",") {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			os.Exit(1)
		}
		logf("listening %s", ln.Addr())
		go serve(ln.(*net.TCPListener), logf)
	}
	select {}
}

func serve(ln *net.TCPListener, logf func(string, ...any)) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			logf("accept: %v", err)
			return
		}
		go handle(c, logf)
	}
}

func handle(c *net.TCPConn, logf func(string, ...any)) {
	defer c.Close()
	dst, err := origdst.Lookup(c)
	if err != nil {
		logf("standin %s error %v", c.RemoteAddr(), err)
		return
	}
	if dst.String() == c.LocalAddr().String() {
		logf("standin %s refused: original destination is the proxy itself", c.RemoteAddr())
		return
	}
	up, err := net.DialTimeout("tcp", dst.String(), 3*time.Second)
	if err != nil {
		logf("standin %s -> %s error %v", c.RemoteAddr(), dst, err)
		return
	}
	defer up.Close()
	logf("standin %s -> %s", c.RemoteAddr(), dst)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); c.CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

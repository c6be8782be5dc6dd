package ebpftest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/shunt-dev/shunt/redirect/origdst"
)

const helperFlag = "-shunt-ebpftest-helper"

// Main runs a helper program when the test binary was started as one, and
// returns otherwise. Call it first in TestMain.
func Main() {
	if len(os.Args) < 3 || os.Args[1] != helperFlag {
		return
	}
	if err := runHelper(os.Args[2], os.Args[3:]); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runHelper(cmd string, args []string) error {
	switch cmd {
	case "echo-server": // ADDR...: reply "echo <line> local=<addr> remote=<addr>"
		return serve(args, func(c net.Conn) {
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintf(c, "echo %s local=%s remote=%s\n", strings.TrimSpace(line), c.LocalAddr(), c.RemoteAddr())
			}
		})
	case "sink-server": // ADDR...: read and discard, for throughput
		return serve(args, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	case "dial": // ADDR MSG: connect, send a line, print the reply
		start := time.Now()
		d := net.Dialer{Timeout: 5 * time.Second}
		if len(args) > 2 { // a source address to bind
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(args[2])}
		}
		c, err := d.Dial("tcp", args[0])
		if err != nil {
			return fmt.Errorf("dial after %s: %w", time.Since(start).Round(time.Millisecond), err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s\n", args[1])
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("read after %s: %w", time.Since(start).Round(time.Millisecond), err)
		}
		fmt.Print("OK ", line)
		return nil
	case "dial-stdin": // ADDR: one connection; send each stdin line, print each reply
		c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		in, r := bufio.NewScanner(os.Stdin), bufio.NewReader(c)
		for in.Scan() {
			fmt.Fprintln(c, in.Text())
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			fmt.Print(line)
		}
		return nil
	case "origdst-proxy": // ADDR...: accept, read the original destination, forward
		return serve(args, origDstProxy)
	case "dns-server": // ADDR...: UDP and TCP; A answers 192.0.2.<n>, TXT names where it was asked
		return dnsServer(args)
	case "dns-udp": // NAME SERVER...: one unconnected socket, one query per server
		return dnsUDP(args[0], args[1:])
	case "dns-tcp": // NAME SERVER
		return dnsTCP(args[0], args[1])
	case "udp-send": // ADDR: send one datagram, report the error
		c, err := net.ListenPacket("udp", ":0")
		if err != nil {
			return err
		}
		dst, err := net.ResolveUDPAddr("udp", args[0])
		if err != nil {
			return err
		}
		if _, err := c.WriteTo([]byte("x"), dst); err != nil {
			return err
		}
		fmt.Println("OK sent")
		return nil
	case "bench":
		return benchClient(args)
	}
	return fmt.Errorf("unknown helper %q", cmd)
}

func serve(addrs []string, handle func(net.Conn)) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(addrs))
	for _, a := range addrs {
		network := "tcp4"
		if strings.HasPrefix(a, "[") {
			network = "tcp6"
		}
		// Go's defaults, MPTCP where the kernel has it, as a proxy
		// written in Go listens.
		ln, err := net.Listen(network, a)
		if err != nil {
			return err
		}
		fmt.Println("listening", ln.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					errs <- err
					return
				}
				go func() { defer c.Close(); handle(c) }()
			}
		}()
	}
	wg.Wait()
	return <-errs
}

// origDstProxy is a proxy stand-in for IPv6 (HAProxy 2.6 reads the original
// destination of IPv4 connections only): getsockopt(SO_ORIGINAL_DST) or
// (IP6T_SO_ORIGINAL_DST), then forward.
func origDstProxy(c net.Conn) {
	dst, err := origdst.Lookup(c.(*net.TCPConn))
	if err != nil {
		fmt.Println("proxy: original destination:", err)
		return
	}
	fmt.Printf("proxy: %s -> %s\n", c.RemoteAddr(), dst)
	up, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
	if err != nil {
		fmt.Println("proxy: dial:", err)
		return
	}
	defer up.Close()
	go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
	_, _ = io.Copy(c, up)
}

func dnsServer(addrs []string) error {
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) > 0 {
			q := r.Question[0]
			switch q.Qtype {
			case dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.ParseIP("192.0.2.53")})
			case dns.TypeTXT:
				m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 5},
					Txt: []string{"via " + w.LocalAddr().Network() + " " + w.LocalAddr().String()}})
			}
		}
		_ = w.WriteMsg(m)
	})
	errs := make(chan error, 2*len(addrs))
	for _, a := range addrs {
		for _, n := range []string{"udp", "tcp"} {
			srv := &dns.Server{Addr: a, Net: n, Handler: handler}
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			go func() { errs <- srv.ListenAndServe() }()
			select {
			case <-started:
			case err := <-errs:
				return err
			}
		}
		fmt.Println("listening", a)
	}
	return <-errs
}

// dnsUDP sends one query to each server from one unconnected socket, first
// one at a time, then all at once, and prints where each reply came from.
func dnsUDP(name string, servers []string) error {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		return err
	}
	defer conn.Close()
	ask := func(server string, id uint16) error {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		m.Id = id
		b, _ := m.Pack()
		dst, err := net.ResolveUDPAddr("udp", server)
		if err != nil {
			return err
		}
		_, err = conn.WriteToUDP(b, dst)
		return err
	}
	read := func() error {
		buf := make([]byte, 1500)
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			return err
		}
		ans := "none"
		if len(m.Answer) > 0 {
			ans = m.Answer[0].(*dns.A).A.String()
		}
		fmt.Printf("reply id=%d from=%s answer=%s\n", m.Id, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), ans)
		return nil
	}
	for i, s := range servers {
		if err := ask(s, uint16(100+i)); err != nil {
			return err
		}
		if err := read(); err != nil {
			return err
		}
	}
	for i, s := range servers {
		if err := ask(s, uint16(200+i)); err != nil {
			return err
		}
	}
	for range servers {
		if err := read(); err != nil {
			return err
		}
	}
	return nil
}

func dnsTCP(name, server string) error {
	c := &dns.Client{Net: "tcp", Timeout: 3 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, _, err := c.Exchange(m, server)
	if err != nil {
		return err
	}
	if len(r.Answer) == 0 {
		return fmt.Errorf("no answer")
	}
	fmt.Println("OK answer=" + r.Answer[0].(*dns.A).A.String())
	return nil
}

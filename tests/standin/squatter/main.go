// Command squatter plays a process of the pod, running under the
// application's UID, that binds the ports of shunt and of the proxy while
// they are down: it answers every DNS query with its own address and every
// TCP connection with the line "impostor". Tests run it to prove that such
// answers never reach the workload.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/miekg/dns"
)

func main() {
	dnsAddrs := flag.String("dns", "", "comma-separated addresses to answer DNS on (UDP and TCP)")
	tcpAddrs := flag.String("tcp", "", "comma-separated addresses to accept TCP on")
	answer := flag.String("answer", "192.0.2.66", "address every A query is answered with")
	flag.Parse()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Question[0].Name + " 5 IN A " + *answer)
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	})
	for _, a := range split(*dnsAddrs) {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			fail(err)
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			fail(err)
		}
		go func() { _ = (&dns.Server{PacketConn: pc, Handler: h}).ActivateAndServe() }()
		go func() { _ = (&dns.Server{Listener: ln, Handler: h}).ActivateAndServe() }()
		fmt.Println("listening", a)
	}
	for _, a := range split(*tcpAddrs) {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			fail(err)
		}
		fmt.Println("listening", a)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Println("accepted", c.RemoteAddr())
				_, _ = c.Write([]byte("HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nimpostor\n"))
				c.Close()
			}
		}()
	}
	select {}
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "listen:", err)
	os.Exit(1)
}

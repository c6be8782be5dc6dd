// Command dnsflood is the load side of bench/dns/flood.sh. With -mode flood
// it sends queries for unique names (so that no cache can answer them) at a
// fixed rate from several sockets, reading and discarding the answers; with
// -mode probe it asks for one name at a fixed interval, one query at a
// time, and prints how many were answered and how fast. Both stop by
// themselves after -dur. Point it only at a server on this machine.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

func main() {
	mode := flag.String("mode", "probe", "flood or probe")
	server := flag.String("server", "127.0.0.1:53", "server address (loopback)")
	dur := flag.Duration("dur", 20*time.Second, "how long to run")
	rate := flag.Int("rate", 50000, "flood: queries per second, all sockets together")
	sockets := flag.Int("sockets", 8, "flood: sockets")
	zone := flag.String("zone", "flood.test.", "flood: the unique names are under this zone")
	name := flag.String("name", "httpbin.mesh.", "probe: the name asked")
	interval := flag.Duration("interval", 2*time.Millisecond, "probe: time between queries")
	timeout := flag.Duration("timeout", time.Second, "probe: how long to wait for an answer")
	within := flag.Duration("within", 10*time.Millisecond, "probe: the latency target reported")
	flag.Parse()
	addr, err := net.ResolveUDPAddr("udp", *server)
	if err != nil || !addr.IP.IsLoopback() {
		fmt.Fprintf(os.Stderr, "dnsflood: -server %q: want a loopback address\n", *server)
		os.Exit(2)
	}
	switch *mode {
	case "flood":
		sent, answered := flood(addr, *dur, *rate, *sockets, dns.Fqdn(*zone))
		fmt.Printf("flood: sent %d (%.0f q/s), answered %d\n", sent, float64(sent)/dur.Seconds(), answered)
	case "probe":
		probe(addr, *dur, dns.Fqdn(*name), *interval, *timeout, *within)
	default:
		fmt.Fprintf(os.Stderr, "dnsflood: -mode %q: want flood or probe\n", *mode)
		os.Exit(2)
	}
}

func flood(addr *net.UDPAddr, dur time.Duration, rate, sockets int, zone string) (sent, answered int64) {
	var nSent, nAnswered atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(dur)
	// Every millisecond each socket sends its share of that millisecond.
	per := max(1, rate/sockets/1000)
	for i := 0; i < sockets; i++ {
		c, err := net.DialUDP("udp", nil, addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "dnsflood:", err)
			os.Exit(1)
		}
		_ = c.SetReadBuffer(4 << 20)
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			_ = c.SetReadDeadline(end.Add(2 * time.Second))
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
				nAnswered.Add(1)
			}
		}()
		go func() {
			defer wg.Done()
			m := new(dns.Msg)
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			prefix := fmt.Sprintf("f%d-%x-", i, rand.Uint32())
			n := 0
			for now := range tick.C {
				if now.After(end) {
					return
				}
				for j := 0; j < per; j++ {
					m.SetQuestion(fmt.Sprintf("%s%d.%s", prefix, n, zone), dns.TypeA)
					m.Id = uint16(n)
					n++
					b, _ := m.Pack()
					if _, err := c.Write(b); err == nil {
						nSent.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	return nSent.Load(), nAnswered.Load()
}

func probe(addr *net.UDPAddr, dur time.Duration, name string, interval, timeout, within time.Duration) {
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsflood:", err)
		os.Exit(1)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	buf := make([]byte, 4096)
	var lat []time.Duration
	asked, answered := 0, 0
	end := time.Now().Add(dur)
	for id := uint16(1); time.Now().Before(end); id++ {
		m.Id = id
		b, _ := m.Pack()
		start := time.Now()
		asked++
		if _, err := c.Write(b); err == nil {
			_ = c.SetReadDeadline(start.Add(timeout))
			for {
				n, err := c.Read(buf)
				if err != nil {
					break
				}
				if n >= 12 && binary.BigEndian.Uint16(buf) == id && binary.BigEndian.Uint16(buf[6:]) > 0 {
					answered++
					lat = append(lat, time.Since(start))
					break
				}
			}
		}
		time.Sleep(time.Until(start.Add(interval)))
	}
	slices.Sort(lat)
	in := 0
	for _, l := range lat {
		if l <= within {
			in++
		}
	}
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	fmt.Printf("probe: asked %d, answered %d, within %v %.2f%% of asked, p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
		asked, answered, within, 100*float64(in)/float64(max(1, asked)),
		ms(pct(0.5)), ms(pct(0.99)), ms(pct(1)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

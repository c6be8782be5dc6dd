package kernelanswers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// listen is where the tests' interceptor listens.
var listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:15053"), netip.MustParseAddrPort("[::1]:15053")}

// TestVerifierAcceptsTheProgram loads the program on the running kernel.
func TestVerifierAcceptsTheProgram(t *testing.T) {
	testenv.RequireRoot(t)
	a, err := Load(listen)
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		t.Fatalf("verifier: %+v", ve)
	}
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
}

func TestLoadRefusesWhatItCannotServe(t *testing.T) {
	for _, c := range []struct {
		listen []string
		want   string
	}{
		{nil, "no listen address"},
		{[]string{"10.0.0.1:53"}, "listen address 10.0.0.1:53 is not on loopback"},
		{[]string{"127.0.0.1:53", "[::1]:5353"}, "listen addresses 127.0.0.1:53 and [::1]:5353 are on different ports"},
		{[]string{"127.0.0.1:0"}, "listen address 127.0.0.1:0: give the port"},
		{[]string{"127.0.0.1:53", "127.0.0.2:53"}, "at most one IPv4 address"},
	} {
		var aps []netip.AddrPort
		for _, l := range c.listen {
			aps = append(aps, netip.MustParseAddrPort(l))
		}
		if _, err := Load(aps); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%v): %v, want %q", c.listen, err, c.want)
		}
	}
}

// table is the interceptor's table of the tests: names the kernel
// answers, and names it leaves to the interceptor (a wildcard, a name
// too long, more records than fit).
func table(t *testing.T) *dnsproxy.Table {
	t.Helper()
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 10) + ".mesh"
	var many []netip.Addr
	for i := 1; i <= 13; i++ {
		many = append(many, netip.AddrFrom4([4]byte{240, 0, 9, byte(i)}))
	}
	tb, err := dnsproxy.NewTable(map[string][]netip.Addr{
		"httpbin.mesh":     {netip.MustParseAddr("240.0.0.1")},
		"httpbin.org":      {netip.MustParseAddr("240.0.0.2"), netip.MustParseAddr("fd00:f0::2")},
		"v6only.mesh":      {netip.MustParseAddr("fd00:f0::3")},
		"twelve.mesh":      many[:12],
		"thirteen.mesh":    many,
		"*.wild.mesh":      {netip.MustParseAddr("240.0.0.4")},
		long:               {netip.MustParseAddr("240.0.0.5")},
		"backend.ns.svc.x": {netip.MustParseAddr("240.0.0.6")},
	}, dnsproxy.TableOptions{TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

type query struct {
	name   string
	msg    func() *dns.Msg
	kernel bool // answered in the kernel
}

func q(name string, qtype uint16, opts ...func(*dns.Msg)) func() *dns.Msg {
	return func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Id = 0x1234
		for _, o := range opts {
			o(m)
		}
		return m
	}
}

func edns(do bool, options ...dns.EDNS0) func(*dns.Msg) {
	return func(m *dns.Msg) {
		m.SetEdns0(1232, do)
		m.IsEdns0().Option = options
	}
}

func queries() []query {
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 10) + ".mesh."
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
	return []query{
		{"A", q("httpbin.mesh.", dns.TypeA), true},
		{"letter case kept", q("HttpBin.MESH.", dns.TypeA), true},
		{"AAAA", q("httpbin.org.", dns.TypeAAAA), true},
		{"A of a dual-stack name", q("httpbin.org.", dns.TypeA), true},
		{"no AAAA: NOERROR, no records", q("httpbin.mesh.", dns.TypeAAAA), true},
		{"no A: NOERROR, no records", q("v6only.mesh.", dns.TypeA), true},
		{"twelve records", q("twelve.mesh.", dns.TypeA), true},
		{"RD clear, CD set", q("httpbin.mesh.", dns.TypeA, func(m *dns.Msg) { m.RecursionDesired = false; m.CheckingDisabled = true }), true},
		{"EDNS", q("httpbin.mesh.", dns.TypeA, edns(false)), true},
		{"EDNS with DO", q("httpbin.org.", dns.TypeAAAA, edns(true)), true},
		{"EDNS with a cookie", q("httpbin.mesh.", dns.TypeA, edns(false, cookie)), true},
		{"name with an odd length", q("backend.ns.svc.x.", dns.TypeA), true},
		{"not in the table", q("example.com.", dns.TypeA), false},
		{"wildcard", q("a.wild.mesh.", dns.TypeA), false},
		{"name over 128 bytes", q(long, dns.TypeA), false},
		{"thirteen records", q("thirteen.mesh.", dns.TypeA), false},
		{"type TXT", q("httpbin.mesh.", dns.TypeTXT), false},
		{"EDNS version 1", q("httpbin.mesh.", dns.TypeA, edns(false), func(m *dns.Msg) { m.IsEdns0().SetVersion(1) }), false},
		{"EDNS with a client subnet", q("httpbin.mesh.", dns.TypeA, edns(false, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(10, 0, 0, 0).To4()})), false},
	}
}

// exchange sends each query from a socket in n to addr and returns the
// raw answers, nil where none came.
func exchange(t *testing.T, n *testenv.Netns, addr string, qs []query) [][]byte {
	t.Helper()
	var c net.PacketConn
	family := "udp4"
	if strings.HasPrefix(addr, "[") {
		family = "udp6"
	}
	if err := n.Do(func() (err error) { c, err = net.ListenPacket(family, ""); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to, err := net.ResolveUDPAddr(family, addr)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, len(qs))
	buf := make([]byte, 4096)
	for i, qq := range qs {
		b, err := qq.msg().Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteTo(b, to); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		m, from, err := c.ReadFrom(buf)
		if err != nil {
			continue
		}
		if from.String() != to.String() {
			t.Errorf("%s: answer from %v, want %v", qq.name, from, to)
		}
		out[i] = append([]byte(nil), buf[:m]...)
	}
	return out
}

// serve runs the interceptor with tb on 127.0.0.1 and ::1 in n.
func serve(t *testing.T, n *testenv.Netns, tb *dnsproxy.Table) *dnsproxy.Server {
	t.Helper()
	return serveWith(t, n, dnsproxy.Config{Table: tb, UDPSockets: 1})
}

// serveWith runs the interceptor configured by cfg with its UDP
// listeners on 127.0.0.1 and ::1 in n; the rest of its sockets (upstream
// ones) are made in this process's namespace.
func serveWith(t *testing.T, n *testenv.Netns, cfg dnsproxy.Config) *dnsproxy.Server {
	t.Helper()
	s, err := dnsproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var pcs []net.PacketConn
	if err := n.Do(func() error {
		for _, a := range []string{"127.0.0.1:15053", "[::1]:15053"} {
			pc, err := net.ListenPacket("udp", a)
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pcs, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	<-s.Ready()
	return s
}

// TestKernelAnswersAreTheInterceptors sends the same queries to the
// interceptor's port with the program on lo and no interceptor running,
// then to the interceptor alone: the kernel answers exactly the table
// names the interceptor's fast path answers, with the same bytes, and
// leaves every other query alone. With both, every query gets the
// interceptor's answer, and the interceptor sees only the others.
func TestKernelAnswersAreTheInterceptors(t *testing.T) {
	testenv.RequireRoot(t)
	tb := table(t)
	qs := queries()
	for _, addr := range []string{"127.0.0.1:15053", "[::1]:15053"} {
		t.Run(addr, func(t *testing.T) {
			n := testenv.NewNetns(t, "kans")
			a, err := Load(listen)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			res, err := a.Sync(tb)
			if err != nil {
				t.Fatal(err)
			}
			if res.Names != 5 || res.Left["name longer than 128 bytes"] != 1 || res.Left["more than 192 bytes of A or AAAA records"] != 1 {
				t.Fatalf("sync: %+v", res)
			}
			detach, err := Attach(n.Path(), a.Program())
			if err != nil {
				t.Fatal(err)
			}
			kernel := exchange(t, n, addr, qs)
			if err := detach(); err != nil {
				t.Fatal(err)
			}
			if out := n.MustRun("tc", "qdisc", "show", "dev", "lo"); strings.Contains(out, "clsact") {
				t.Errorf("detach left a clsact qdisc on lo: %s", out)
			}
			s := serve(t, n, tb)
			user := exchange(t, n, addr, qs)
			want := 0
			for i, qq := range qs {
				switch {
				case user[i] == nil:
					t.Errorf("%s: the interceptor did not answer", qq.name)
				case qq.kernel && !bytes.Equal(kernel[i], user[i]):
					t.Errorf("%s: kernel answer\n%x\nwant the interceptor's\n%x", qq.name, kernel[i], user[i])
				case !qq.kernel && kernel[i] != nil:
					t.Errorf("%s: answered in the kernel:\n%x", qq.name, kernel[i])
				}
				if qq.kernel {
					want++
				}
			}
			st, err := a.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Answered != uint64(want) {
				t.Errorf("answered %d in the kernel, want %d (%+v)", st.Answered, want, st)
			}

			// Both: the kernel answers its names, the interceptor
			// the rest, and every answer is the interceptor's.
			if detach, err = Attach(n.Path(), a.Program()); err != nil {
				t.Fatal(err)
			}
			defer detach()
			before := s.Metrics().Snapshot()
			both := exchange(t, n, addr, qs)
			for i, qq := range qs {
				if !bytes.Equal(both[i], user[i]) {
					t.Errorf("%s with both: answer\n%x\nwant\n%x", qq.name, both[i], user[i])
				}
			}
			if got := total(s.Metrics().Snapshot()) - total(before); got != uint64(len(qs)-want) {
				t.Errorf("the interceptor saw %d queries with the kernel answering, want %d", got, len(qs)-want)
			}
		})
	}
}

// total is the number of queries the interceptor counted.
func total(m dnsproxy.MetricsSnapshot) uint64 {
	var n uint64
	for _, byOutcome := range m.Queries {
		for _, c := range byOutcome {
			n += c
		}
	}
	return n
}

// TestSyncFollowsTheTable: names added, changed and removed from the
// table are answered, answered anew, and no longer answered.
func TestSyncFollowsTheTable(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, "kansync")
	a, err := Load(listen)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	detach, err := Attach(n.Path(), a.Program())
	if err != nil {
		t.Fatal(err)
	}
	defer detach()
	mk := func(m map[string][]netip.Addr) *dnsproxy.Table {
		tb, err := dnsproxy.NewTable(m, dnsproxy.TableOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	answer := func(name string) string { return answerOf(t, n, name) }
	steps := []struct {
		table            map[string][]netip.Addr
		written, deleted int
		want             map[string]string
	}{
		{map[string][]netip.Addr{"a.mesh": {netip.MustParseAddr("240.0.0.1")}, "b.mesh": {netip.MustParseAddr("240.0.0.2")}}, 2, 0,
			map[string]string{"a.mesh.": "240.0.0.1", "b.mesh.": "240.0.0.2", "c.mesh.": "none"}},
		{map[string][]netip.Addr{"a.mesh": {netip.MustParseAddr("240.0.0.1")}, "b.mesh": {netip.MustParseAddr("240.0.0.3")}, "c.mesh": {netip.MustParseAddr("240.0.0.4")}}, 2, 0,
			map[string]string{"a.mesh.": "240.0.0.1", "b.mesh.": "240.0.0.3", "c.mesh.": "240.0.0.4"}},
		{map[string][]netip.Addr{"c.mesh": {netip.MustParseAddr("240.0.0.4")}}, 0, 2,
			map[string]string{"a.mesh.": "none", "b.mesh.": "none", "c.mesh.": "240.0.0.4"}},
	}
	for i, s := range steps {
		res, err := a.Sync(mk(s.table))
		if err != nil {
			t.Fatal(err)
		}
		if res.Written != s.written || res.Deleted != s.deleted {
			t.Errorf("step %d: wrote %d and deleted %d entries, want %d and %d", i, res.Written, res.Deleted, s.written, s.deleted)
		}
		for name, want := range s.want {
			if got := answer(name); got != want {
				t.Errorf("step %d: %s answered %s, want %s", i, name, got, want)
			}
		}
	}
}

// TestOnlyTheListenAddressesAreAnswered: a query to another loopback
// address at the same port, where no interceptor listens, gets no
// answer from the kernel either; nor does IPv6 when the interceptor
// listens on IPv4 only.
func TestOnlyTheListenAddressesAreAnswered(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, "kansaddr")
	a, err := Load([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:15053")})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Sync(table(t)); err != nil {
		t.Fatal(err)
	}
	detach, err := Attach(n.Path(), a.Program())
	if err != nil {
		t.Fatal(err)
	}
	defer detach()
	qs := []query{{name: "A", msg: q("httpbin.mesh.", dns.TypeA)}}
	if got := exchange(t, n, "127.0.0.1:15053", qs)[0]; got == nil {
		t.Fatal("the listen address was not answered")
	}
	for _, addr := range []string{"127.0.0.5:15053", "[::1]:15053"} {
		if got := exchange(t, n, addr, qs)[0]; got != nil {
			t.Errorf("%s answered in the kernel: %x", addr, got)
		}
	}
}

// BenchmarkSync is what the agent adds to a snapshot of many names with
// kernel answers on: the first Sync of a table of 65,536 names (the most
// the kernel holds), and a Sync after one name changed.
func BenchmarkSync(b *testing.B) {
	testenv.RequireRoot(b)
	names := func(changed string) *dnsproxy.Table {
		m := make(map[string][]netip.Addr, MaxNames)
		for i := range MaxNames {
			m[fmt.Sprintf("svc-%d.bench.mesh", i)] = []netip.Addr{netip.AddrFrom4([4]byte{240, 1, byte(i >> 8), byte(i)})}
		}
		m["svc-0.bench.mesh"] = []netip.Addr{netip.MustParseAddr(changed)}
		tb, err := dnsproxy.NewTable(m, dnsproxy.TableOptions{})
		if err != nil {
			b.Fatal(err)
		}
		return tb
	}
	t1, t2 := names("240.0.0.1"), names("240.0.0.2")
	b.Run("first", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			a, err := Load(listen)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := a.Sync(t1); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			a.Close()
			b.StartTimer()
		}
	})
	b.Run("one changed", func(b *testing.B) {
		a, err := Load(listen)
		if err != nil {
			b.Fatal(err)
		}
		defer a.Close()
		if _, err := a.Sync(t1); err != nil {
			b.Fatal(err)
		}
		tables := []*dnsproxy.Table{t2, t1}
		i := 0
		for b.Loop() {
			res, err := a.Sync(tables[i%2])
			if err != nil || res.Written != 1 {
				b.Fatalf("%+v %v", res, err)
			}
			i++
		}
	})
}

package kernelanswers

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// FuzzKernelAnswersAreTheFastPaths runs the program on a datagram
// carrying any payload to the interceptor's port: it answers exactly
// when the interceptor's fast path answers the payload from the same
// table (dnsproxy.TableAnswer), with the same bytes. The table has no
// wildcard, and no name over the kernel's limits, so the two must agree on
// every input. `go test` runs the seeds; `-fuzz` looks further.
func FuzzKernelAnswersAreTheFastPaths(f *testing.F) {
	for _, qq := range queries() {
		b, err := qq.msg().Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0xc0, 0x0c, 0, 1, 0, 1})
	testenv.RequireRoot(f)
	// Loaded once per fuzzing process: a load takes the verifier most of
	// a second.
	tb, err := dnsproxy.NewTable(map[string][]netip.Addr{
		"httpbin.mesh":     {netip.MustParseAddr("240.0.0.1")},
		"httpbin.org":      {netip.MustParseAddr("240.0.0.2"), netip.MustParseAddr("fd00:f0::2")},
		"v6only.mesh":      {netip.MustParseAddr("fd00:f0::3")},
		"backend.ns.svc.x": {netip.MustParseAddr("240.0.0.6")},
		"a":                {netip.MustParseAddr("240.0.0.7")},
	}, dnsproxy.TableOptions{})
	if err != nil {
		f.Fatal(err)
	}
	a, err := Load(listen)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { a.Close() })
	if _, err := a.Sync(tb); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if len(payload) > 1400 {
			// BPF_PROG_TEST_RUN takes a page at most; the program
			// leaves anything over 203 bytes alone unread.
			t.Skip()
		}
		in := packet(netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("127.0.0.1:15053"), payload, false)
		opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+1024)}
		if _, err := a.Program().Run(opts); err != nil {
			t.Fatal(err)
		}
		out := opts.DataOut
		kernel := !bytes.Equal(out, in)
		want, user := dnsproxy.TableAnswer(tb, payload)
		switch {
		case kernel != user:
			t.Fatalf("kernel answered %v, the fast path %v, for %x", kernel, user, payload)
		case kernel && !bytes.Equal(out[14+20+8:], want):
			t.Fatalf("for %x the kernel answered\n%x\nthe fast path\n%x", payload, out[14+20+8:], want)
		case kernel && sum(pseudo(out[14:], len(out)-14-20), out[14+20:]) != 0xffff:
			t.Fatalf("for %x the answer's UDP checksum is wrong", payload)
		}
	})
}

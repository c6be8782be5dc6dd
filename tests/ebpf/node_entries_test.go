package ebpf_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	cebpf "github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// The node's maps that all pods share, keyed by cgroup id first.
var sharedPodMaps = []string{"pod_uid_rules", "pod_local_addrs", "pod_dns_servers", "pod_egress_endpoints"}

// podEntries counts, in each shared map of the node, the entries of the
// pod with cgroup id id, and its addresses in addr_pods.
func podEntries(t *testing.T, pinDir string, id uint64) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, name := range append(sharedPodMaps, "addr_pods") {
		m, err := cebpf.LoadPinnedMap(filepath.Join(pinDir, "map_"+name), nil)
		if err != nil {
			t.Fatal(err)
		}
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			owner := k
			if name == "addr_pods" {
				owner = v
			}
			if binary.NativeEndian.Uint64(owner[:8]) == id {
				out[name]++
			}
		}
		if err := it.Err(); err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		m.Close()
	}
	return out
}

func cgroupIno(t *testing.T, dir string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestNodeEnrolmentKeepsToItsEntries: an enrolment reads and writes only
// the pod's own entries of the node's shared maps (found from its record,
// not by scanning every pod's), so each plan or address change must leave
// the pod with exactly its new entries, the other pod's untouched, and a
// leave must remove every one of them.
func TestNodeEnrolmentKeepsToItsEntries(t *testing.T) {
	node, opts := ebpftest.NewNode(t)
	a, b := ebpftest.NewPodN(t, 1), ebpftest.NewPodN(t, 2)
	idA, idB := cgroupIno(t, a.Cgroup), cgroupIno(t, b.Cgroup)
	ctx := context.Background()

	plan := func(dns []string, uids int, endpoints ...string) *redirect.Plan {
		p := ebpftest.Plan()
		p.CaptureInbound = false
		p.DNSMode = redirect.DNSResolvers
		p.DNSPort = redirect.DefaultDNSPort
		p.ResolvConf = "test"
		for _, d := range dns {
			p.DNSServers = append(p.DNSServers, netip.MustParseAddr(d))
		}
		for i := 0; i < uids; i++ {
			p.ExcludeOutboundPortsForUIDs = append(p.ExcludeOutboundPortsForUIDs, redirect.UIDPortExclusion{
				Protocol: "tcp", Ports: []redirect.PortRange{{First: uint16(2000 + i), Last: uint16(2000 + i)}},
				UIDs: []redirect.IDRange{{First: uint32(3000 + i), Last: uint32(3000 + i)}}})
		}
		p.Egress = &redirect.Egress{Allowed: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}}
		for _, e := range endpoints {
			p.Egress.Endpoints = append(p.Egress.Endpoints, netip.MustParseAddrPort(e))
		}
		return p
	}
	want := func(dns, uids, endpoints, addrs int) map[string]int {
		m := map[string]int{"pod_dns_servers": dns, "pod_uid_rules": uids, "pod_egress_endpoints": endpoints, "pod_local_addrs": addrs, "addr_pods": addrs}
		for k, v := range m {
			if v == 0 {
				delete(m, k)
			}
		}
		return m
	}
	check := func(when string, pod *ebpftest.Pod, id uint64, w map[string]int) {
		t.Helper()
		if got := podEntries(t, opts.PinDir, id); fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("%s: cgroup %d has entries %v, want %v", when, id, got, w)
		}
		if pod == nil {
			return
		}
		if st, err := node.Status(ctx, pod.Cgroup); err != nil || len(st.Drift) > 0 {
			t.Fatalf("%s: status: %v %v", when, err, st.Drift)
		}
	}

	// The pods' own addresses: those of their link, the IPv6 link-local
	// one too.
	addrs := func(pod *ebpftest.Pod) int {
		n := 0
		for _, l := range strings.Split(pod.NS.MustRun("ip", "-o", "addr", "show"), "\n") {
			if f := strings.Fields(l); len(f) > 3 && f[1] != "lo" && strings.HasPrefix(f[2], "inet") {
				n++
			}
		}
		return n
	}
	base := addrs(a)
	b.Enrol(node, plan([]string{"10.2.0.53"}, 1, "10.2.0.2:8080"))
	bWant := want(1, 1, 1, addrs(b))
	check("B enrolled", b, idB, bWant)

	a.Enrol(node, plan([]string{"10.1.0.53", "10.1.0.54"}, 3, "10.1.0.2:8080", "10.1.0.2:8081"))
	check("A enrolled", a, idA, want(2, 3, 2, base))
	check("A enrolled: B", b, idB, bWant)

	a.Enrol(node, plan([]string{"10.1.0.55"}, 1, "10.1.0.2:9090"))
	check("A's plan shrank", a, idA, want(1, 1, 1, base))

	a.NS.MustRun("ip", "addr", "add", "10.1.0.7/24", "dev", a.Host.Dev)
	a.Enrol(node, plan([]string{"10.1.0.55"}, 2, "10.1.0.2:9090"))
	check("A gained an address", a, idA, want(1, 2, 1, base+1))

	a.NS.MustRun("ip", "addr", "del", "10.1.0.7/24", "dev", a.Host.Dev)
	a.Enrol(node, plan(nil, 0))
	check("A lost the address, emptied its lists", a, idA, want(0, 0, 0, base))
	check("A changed: B", b, idB, bWant)

	a.Enrol(node, plan([]string{"10.1.0.53"}, 2, "10.1.0.2:8080"))
	if err := node.Leave(ctx, a.Cgroup); err != nil {
		t.Fatal(err)
	}
	check("A left", nil, idA, want(0, 0, 0, 0))
	check("A left: B", b, idB, bWant)
}

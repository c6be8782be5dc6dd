package mesh

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestVIPsDeterministicAndInRange(t *testing.T) {
	a, err := NewVIPAllocator(DefaultVIPv4CIDR, DefaultVIPv6CIDR)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"httpbin.mesh", "httpbin.org", "example.com", "example.mesh"}
	v1, err := a.Allocate(names, VIPs{})
	if err != nil {
		t.Fatal(err)
	}
	// Another node, with the names in another order and no history.
	v2, err := a.Allocate([]string{"example.mesh", "example.com", "httpbin.org", "httpbin.mesh"}, VIPs{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if v1.V4[n] != v2.V4[n] || v1.V6[n] != v2.V6[n] {
			t.Errorf("%s: %v/%v vs %v/%v", n, v1.V4[n], v1.V6[n], v2.V4[n], v2.V6[n])
		}
		if !a.V4.Contains(v1.V4[n]) || !a.V6.Contains(v1.V6[n]) {
			t.Errorf("%s: %v %v out of range", n, v1.V4[n], v1.V6[n])
		}
	}
}

func TestVIPsStableWhileNameExists(t *testing.T) {
	a, _ := NewVIPAllocator("240.0.0.0/28", "")
	first, err := a.Allocate([]string{"z.mesh"}, VIPs{})
	if err != nil {
		t.Fatal(err)
	}
	// Add names until one of them would have hashed onto z's address: z keeps it.
	var names []string
	for i := range 6 {
		names = append(names, fmt.Sprintf("a%d.mesh", i))
	}
	next, err := a.Allocate(append(names, "z.mesh"), first)
	if err != nil {
		t.Fatal(err)
	}
	if next.V4["z.mesh"] != first.V4["z.mesh"] {
		t.Errorf("z.mesh moved from %v to %v", first.V4["z.mesh"], next.V4["z.mesh"])
	}
	seen := map[netip.Addr]string{}
	for n, ip := range next.V4 {
		if o, dup := seen[ip]; dup {
			t.Errorf("%s and %s share %v", n, o, ip)
		}
		seen[ip] = n
		if ip == netip.MustParseAddr("240.0.0.0") || ip == netip.MustParseAddr("240.0.0.15") {
			t.Errorf("%s got the network or broadcast address %v", n, ip)
		}
	}
	// Removing a name releases it; the others stay.
	after, _ := a.Allocate(names[1:], next)
	if _, ok := after.V4[names[0]]; ok {
		t.Error("removed name kept its VIP")
	}
	for _, n := range names[1:] {
		if after.V4[n] != next.V4[n] {
			t.Errorf("%s moved", n)
		}
	}
}

func TestVIPsPreviousOutOfRangeReassigned(t *testing.T) {
	a, _ := NewVIPAllocator("240.0.0.0/24", "")
	prev := VIPs{V4: map[string]netip.Addr{"x.mesh": netip.MustParseAddr("10.0.0.1")}}
	got, err := a.Allocate([]string{"x.mesh"}, prev)
	if err != nil {
		t.Fatal(err)
	}
	if !a.V4.Contains(got.V4["x.mesh"]) {
		t.Errorf("kept an address outside the range: %v", got.V4["x.mesh"])
	}
	if got.V6 != nil {
		t.Error("IPv6 disabled but allocated")
	}
}

func TestVIPRangeErrors(t *testing.T) {
	for _, c := range [][2]string{{"10.0.0.0/31", ""}, {"fd00::/64", ""}, {"240.0.0.0/4", "10.0.0.0/8"}, {"240.0.0.0/4", "fd00::/127"}, {"nope", ""}} {
		if _, err := NewVIPAllocator(c[0], c[1]); err == nil {
			t.Errorf("%v accepted", c)
		}
	}
	a, _ := NewVIPAllocator("240.0.0.0/30", "")
	if _, err := a.Allocate([]string{"a", "b", "c"}, VIPs{}); err == nil {
		t.Error("overfull range accepted")
	}
}

func BenchmarkAllocate10k(b *testing.B) {
	a, _ := NewVIPAllocator(DefaultVIPv4CIDR, DefaultVIPv6CIDR)
	names := make([]string, 20000)
	for i := range names {
		names[i] = fmt.Sprintf("svc-%d.mesh", i)
	}
	for b.Loop() {
		if _, err := a.Allocate(names, VIPs{}); err != nil {
			b.Fatal(err)
		}
	}
}

package resolvconf

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	rc, err := Parse([]byte(`# kubelet
nameserver 10.96.0.10
nameserver fd00::53
nameserver 127.0.0.1:5353 ; comment
search default.svc.cluster.local svc.cluster.local Cluster.Local
options ndots:5 timeout:2
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.96.0.10:53", "[fd00::53]:53", "127.0.0.1:5353"}
	if len(rc.Nameservers) != len(want) {
		t.Fatalf("nameservers %v, want %v", rc.Nameservers, want)
	}
	for i, w := range want {
		if rc.Nameservers[i].String() != w {
			t.Errorf("nameserver %d = %s, want %s", i, rc.Nameservers[i], w)
		}
	}
	if strings.Join(rc.Search, " ") != "default.svc.cluster.local. svc.cluster.local. cluster.local." {
		t.Errorf("search = %v", rc.Search)
	}
	if rc.Ndots != 5 || len(rc.Options) != 2 {
		t.Errorf("ndots %d options %v", rc.Ndots, rc.Options)
	}
	for _, bad := range []string{"nameserver dns.google\n", "nameserver\n", "options ndots:x\n", "search bad..name\n"} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
	if rc, _ := Parse(nil); rc.Ndots != 1 {
		t.Errorf("default ndots = %d, want 1", rc.Ndots)
	}
}

// Addrs is what capture matches: no port, no zone, IPv4-mapped as IPv4,
// each address once.
func TestAddrs(t *testing.T) {
	rc, err := Parse([]byte("nameserver 10.0.0.1\nnameserver ::ffff:10.0.0.1\nnameserver fe80::1%eth0\nnameserver 10.0.0.1:5353\n#nameserver 10.9.9.9\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fe80::1")}
	if got := rc.Addrs(); !slices.Equal(got, want) {
		t.Errorf("Addrs = %v, want %v", got, want)
	}
}

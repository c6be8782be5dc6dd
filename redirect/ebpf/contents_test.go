package ebpf

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
)

func TestDesiredRefusesWhatHooksCannotDo(t *testing.T) {
	p := &redirect.Plan{ExcludeInterfaces: []string{"eth1"}}
	if _, err := desired(p, nil); err == nil || !strings.Contains(err.Error(), "excludeInterfaces") {
		t.Fatalf("got %v", err)
	}
	p = &redirect.Plan{}
	for i := 0; i < 65; i++ {
		p.ExcludeOutboundPortsForUIDs = append(p.ExcludeOutboundPortsForUIDs, redirect.UIDPortExclusion{
			Protocol: "tcp", Ports: []redirect.PortRange{{First: 1, Last: 2}}, UIDs: []redirect.IDRange{{First: uint32(i), Last: uint32(i)}}})
	}
	if _, err := desired(p, nil); err == nil {
		t.Fatal("65 uid rules accepted")
	}
}

func TestLPMKeyIPv4IsMapped(t *testing.T) {
	k := lpmKey(netip.MustParsePrefix("10.0.0.0/8"))
	if k.Prefixlen != 104 {
		t.Fatalf("prefix length %d, want 104", k.Prefixlen)
	}
	b := mustBytes(k.Ip)
	if b[10] != 0xff || b[11] != 0xff || b[12] != 10 {
		t.Fatalf("key bytes %x", b)
	}
}

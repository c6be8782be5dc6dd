package testenv

import (
	"net/netip"
	"strconv"
	"testing"
)

// Host is one end of a link: a namespace and its addresses on that link.
type Host struct {
	NS   *Netns
	Dev  string
	IPv4 netip.Addr
	IPv6 netip.Addr
}

// Link joins two namespaces with a veth pair and addresses both ends from
// 10.<n>.0.0/24 and fd00:<n>::/64, where n tells test links apart inside one
// test. IPv6 addresses skip duplicate address detection so they are usable at
// once. The pair disappears with the namespaces.
func Link(t testing.TB, a, b *Netns, n int) (Host, Host) {
	t.Helper()
	devA, devB := UniqueName("va"), UniqueName("vb")
	// Created inside a so that the host namespace never holds either end.
	a.MustRun("ip", "link", "add", devA, "type", "veth", "peer", "name", devB, "netns", b.Name())
	ha := Host{NS: a, Dev: devA,
		IPv4: netip.MustParseAddr("10." + itoa(n) + ".0.1"), IPv6: netip.MustParseAddr("fd00:" + itoa(n) + "::1")}
	hb := Host{NS: b, Dev: devB,
		IPv4: netip.MustParseAddr("10." + itoa(n) + ".0.2"), IPv6: netip.MustParseAddr("fd00:" + itoa(n) + "::2")}
	for _, h := range []Host{ha, hb} {
		h.NS.MustRun("ip", "addr", "add", h.IPv4.String()+"/24", "dev", h.Dev)
		h.NS.MustRun("ip", "-6", "addr", "add", h.IPv6.String()+"/64", "dev", h.Dev, "nodad")
		h.NS.MustRun("ip", "link", "set", h.Dev, "up")
	}
	return ha, hb
}

// AddDefaultRoute sends everything not on a link through gw, so that a "pod"
// can reach addresses that exist only behind another namespace.
func AddDefaultRoute(t testing.TB, h Host, gw Host) {
	t.Helper()
	h.NS.MustRun("ip", "route", "add", "default", "via", gw.IPv4.String(), "dev", h.Dev)
	h.NS.MustRun("ip", "-6", "route", "add", "default", "via", gw.IPv6.String(), "dev", h.Dev)
}

func itoa(n int) string { return strconv.Itoa(n) }

package ebpf

import (
	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink/nl"

	"github.com/shunt-dev/shunt/internal/tcbpf"
)

// qdiscAndFilter are the requests for the interface's clsact qdisc and
// shunt's inbound_tc filter on it, named as the filter of a qdisc shunt
// created (see internal/tcbpf: the two go to the kernel in one write).
func qdiscAndFilter(idx int, prog *ebpf.Program) (qdisc, filter *nl.NetlinkRequest) {
	return tcbpf.QdiscAndFilter(shuntFilter(idx, tcFilterNameOwnQdisc, prog))
}

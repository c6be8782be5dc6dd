package kernelanswers

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The filter's place at tc egress of lo. Queries to the interceptor reach
// lo's egress after the capture has sent them there (the eBPF engine's
// sendmsg and connect hooks), so the answer, turned round in place, goes
// back up lo's ingress to the asking socket like the interceptor's own.
const (
	filterName     = "shunt_dns_answer"
	filterPriority = 1
	filterHandle   = 0x53
)

// Attach puts prog at tc egress of the loopback interface of the network
// namespace at netnsPath ("" for the caller's own), on lo's clsact qdisc,
// which it adds where there is none. The returned detach removes the
// filter again, and the qdisc when Attach added it and no other filter is
// on it.
func Attach(netnsPath string, prog *ebpf.Program) (detach func() error, err error) {
	h, err := rtnl(netnsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	lo, err := loopback(h)
	if err != nil {
		return nil, err
	}
	idx := lo.Attrs().Index
	added := false
	if err := h.QdiscAdd(clsact(idx)); err == nil {
		added = true
	} else if !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("kernel DNS answers: add clsact qdisc to lo: %w", err)
	}
	if err := h.FilterAdd(filter(idx, prog)); err != nil {
		if added {
			_ = h.QdiscDel(clsact(idx))
		}
		return nil, fmt.Errorf("kernel DNS answers: add filter %s to tc egress of lo (priority %d): %w", filterName, filterPriority, err)
	}
	return func() error { return remove(netnsPath, added) }, nil
}

func remove(netnsPath string, qdisc bool) error {
	h, err := rtnl(netnsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := loopback(h)
	if err != nil {
		return err
	}
	idx := lo.Attrs().Index
	if err := h.FilterDel(filter(idx, nil)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("kernel DNS answers: delete filter %s of lo: %w", filterName, err)
	}
	if !qdisc {
		return nil
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := h.FilterList(lo, parent)
		if err != nil {
			return fmt.Errorf("kernel DNS answers: list tc filters of lo: %w", err)
		}
		if len(fs) > 0 {
			return nil // another tool's filters: its qdisc now
		}
	}
	if err := h.QdiscDel(clsact(idx)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("kernel DNS answers: delete the clsact qdisc of lo: %w", err)
	}
	return nil
}

func rtnl(path string) (*netlink.Handle, error) {
	if path == "" {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("kernel DNS answers: rtnetlink: %w", err)
		}
		return h, nil
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("kernel DNS answers: open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("kernel DNS answers: rtnetlink in %s: %w", path, err)
	}
	return h, nil
}

func loopback(h *netlink.Handle) (netlink.Link, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("kernel DNS answers: list interfaces: %w", err)
	}
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			return l, nil
		}
	}
	return nil, errors.New("kernel DNS answers: the namespace has no loopback interface")
}

func clsact(idx int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

func filter(idx int, prog *ebpf.Program) *netlink.BpfFilter {
	fd := -1
	if prog != nil {
		fd = prog.FD()
	}
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Priority:  filterPriority,
			Handle:    filterHandle,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           fd,
		Name:         filterName,
		DirectAction: true,
	}
}

package kernelanswers

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/internal/tcbpf"
)

// The filter's place at tc egress of lo. Queries to the interceptor reach
// lo's egress after the capture has sent them there (the eBPF engine's
// sendmsg and connect hooks), so the answer, turned round in place, goes
// back up lo's ingress to the asking socket like the interceptor's own.
//
// The filter's name says whether shunt added lo's clsact qdisc with it
// (filterNameOwnQdisc): a process killed before it could detach leaves
// the filter, and the next Attach or Detach still knows whose the qdisc
// is.
const (
	filterName         = "shunt_dns_answer"
	filterNameOwnQdisc = "shunt_dns_answer_q"
	filterPriority     = 1
	filterHandle       = 0x53
)

// Attach puts prog at tc egress of the loopback interface of the network
// namespace at netnsPath ("" for the caller's own), on lo's clsact qdisc,
// which it adds where there is none. A filter of shunt's already there
// (left by a process that was killed) is replaced; another tool's filter
// at that place is an error. The returned detach removes the filter
// again, and the qdisc when shunt added it and no other filter is on it.
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
	detach = func() error { return Detach(netnsPath) }
	mine, other, err := slot(h, lo)
	if err != nil {
		return nil, err
	}
	if other != "" {
		return nil, fmt.Errorf("kernel DNS answers: tc egress of lo, priority %d, holds %s: remove it or do not ask for kernel answers", filterPriority, other)
	}
	if mine != "" {
		if err := h.FilterReplace(filter(idx, mine, prog)); err != nil {
			return nil, fmt.Errorf("kernel DNS answers: replace filter %s on tc egress of lo: %w", mine, err)
		}
		return detach, nil
	}
	// The qdisc, where lo has none, and the filter go in one write, so
	// that a kill leaves neither or both (internal/tcbpf).
	qerr, ferr := tcbpf.AddWithQdisc(h, netnsPath, filter(idx, filterNameOwnQdisc, prog), filterName)
	if qerr != nil {
		return nil, fmt.Errorf("kernel DNS answers: add clsact qdisc to lo: %w", qerr)
	}
	if ferr != nil {
		return nil, fmt.Errorf("kernel DNS answers: add filter to tc egress of lo (priority %d): %w", filterPriority, ferr)
	}
	return detach, nil
}

// Detach removes shunt's filter from tc egress of lo in the namespace at
// netnsPath, if it is there, and lo's clsact qdisc when shunt added it and
// no other filter is on it.
func Detach(netnsPath string) error {
	h, err := rtnl(netnsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := loopback(h)
	if err != nil {
		return err
	}
	mine, _, err := slot(h, lo)
	if err != nil || mine == "" {
		return err
	}
	idx := lo.Attrs().Index
	if err := h.FilterDel(filter(idx, mine, nil)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("kernel DNS answers: delete filter %s of lo: %w", mine, err)
	}
	if mine != filterNameOwnQdisc {
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

// slot names the filter at shunt's place on tc egress of lo (its
// priority): mine when it is shunt's, other (described) when another
// tool's, both empty when the place, or lo's clsact qdisc, is free.
func slot(h *netlink.Handle, lo netlink.Link) (mine, other string, err error) {
	fs, err := h.FilterList(lo, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return "", "", nil // no clsact qdisc
		}
		return "", "", fmt.Errorf("kernel DNS answers: list tc egress filters of lo: %w", err)
	}
	for _, f := range fs {
		// Filters of one priority must be of one kind: any other
		// filter at shunt's priority keeps shunt's out.
		a := f.Attrs()
		if a.Priority != filterPriority {
			continue
		}
		if bf, ok := f.(*netlink.BpfFilter); ok && a.Handle == filterHandle && (bf.Name == filterName || bf.Name == filterNameOwnQdisc) {
			return bf.Name, "", nil
		}
		if bf, ok := f.(*netlink.BpfFilter); ok {
			return "", fmt.Sprintf("bpf filter %q", bf.Name), nil
		}
		return "", f.Type() + " filter", nil
	}
	return "", "", nil
}

func rtnl(path string) (*netlink.Handle, error) {
	h, err := tcbpf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kernel DNS answers: %w", err)
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

func clsact(idx int) *netlink.GenericQdisc { return tcbpf.Clsact(idx) }

func filter(idx int, name string, prog *ebpf.Program) *netlink.BpfFilter {
	return tcbpf.Filter(idx, netlink.HANDLE_MIN_EGRESS, filterPriority, filterHandle, name, prog)
}

// Package tcbpf holds what shunt's tc programs share to be attached:
// rtnetlink in another network namespace, the clsact qdisc, and a cls_bpf
// filter in direct-action mode.
package tcbpf

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNetnsGone is returned by Open when the namespace no longer exists:
// its devices, and their filters, went with it.
var ErrNetnsGone = errors.New("network namespace is gone")

// Open opens an rtnetlink handle in the namespace at path ("" is the
// caller's own), without moving the calling thread.
func Open(path string) (*netlink.Handle, error) {
	if path == "" {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("rtnetlink: %w", err)
		}
		return h, nil
	}
	ns, err := netns.GetFromPath(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, ErrNetnsGone)
	}
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink in %s: %w", path, err)
	}
	return h, nil
}

// Clsact is the clsact qdisc of the interface with index idx.
func Clsact(idx int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

// Filter is a cls_bpf filter in direct-action mode running prog (nil:
// none, to name the filter for a deletion) on the interface with index
// idx, at parent (netlink.HANDLE_MIN_INGRESS or HANDLE_MIN_EGRESS),
// priority and handle.
func Filter(idx int, parent uint32, priority uint16, handle uint32, name string, prog *ebpf.Program) *netlink.BpfFilter {
	fd := -1
	if prog != nil {
		fd = prog.FD()
	}
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx,
			Parent:    parent,
			Priority:  priority,
			Handle:    handle,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           fd,
		Name:         name,
		DirectAction: true,
	}
}

package tcbpf

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Creating an interface's clsact qdisc and putting a filter on it are two
// rtnetlink requests. Sent one after the other, a process killed between
// them (an init container's deadline, an OOM kill) leaves a qdisc with no
// filter: nothing records that shunt created it, so nothing removes it,
// and the next attach takes it for another tool's. Both go in one write
// instead: the kernel handles every message of a write before the writer
// can be killed, so the qdisc never exists without the filter, whose name
// then says whose the qdisc is.

// QdiscAndFilter are the two requests: the clsact qdisc of f's interface,
// and f. Encoded with the netlink library's own request types, as its
// QdiscAdd and FilterAdd encode them.
func QdiscAndFilter(f *netlink.BpfFilter) (qdisc, filter *nl.NetlinkRequest) {
	idx := f.LinkIndex
	qdisc = nl.NewNetlinkRequest(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	q := Clsact(idx)
	qdisc.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(idx), Handle: q.Handle, Parent: q.Parent})
	qdisc.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated(q.QdiscType)))

	filter = nl.NewNetlinkRequest(unix.RTM_NEWTFILTER, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	filter.AddData(&nl.TcMsg{
		Family:  nl.FAMILY_ALL,
		Ifindex: int32(idx),
		Handle:  f.Handle,
		Parent:  f.Parent,
		Info:    netlink.MakeHandle(f.Priority, nl.Swap16(f.Protocol)),
	})
	filter.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated(f.Type())))
	options := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	options.AddRtAttr(nl.TCA_BPF_FD, nl.Uint32Attr(uint32(f.Fd)))
	options.AddRtAttr(nl.TCA_BPF_NAME, nl.ZeroTerminated(f.Name))
	options.AddRtAttr(nl.TCA_BPF_FLAGS, nl.Uint32Attr(nl.TCA_BPF_FLAG_ACT_DIRECT))
	filter.AddData(options)
	return qdisc, filter
}

// AddQdiscAndFilter sends the two requests of QdiscAndFilter in one write
// to the namespace at netnsPath ("" is the caller's own) and returns the
// kernel's answer to each: it handles the filter whatever it answered to
// the qdisc (an existing qdisc, EEXIST, still takes the filter). err is a
// failure to ask or to read the answers.
func AddQdiscAndFilter(netnsPath string, f *netlink.BpfFilter) (qdiscErr, filterErr, err error) {
	ns := netns.None()
	if netnsPath != "" {
		ns, err = netns.GetFromPath(netnsPath)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("%s: %w", netnsPath, ErrNetnsGone)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("open network namespace %s: %w", netnsPath, err)
		}
		defer ns.Close()
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("rtnetlink in %q: %w", netnsPath, err)
	}
	defer s.Close()
	q, fr := QdiscAndFilter(f)
	msg := append(q.Serialize(), fr.Serialize()...)
	if err := unix.Sendto(s.GetFd(), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, nil, fmt.Errorf("send clsact qdisc and filter %s: %w", f.Name, err)
	}
	answers := map[uint32]error{}
	for len(answers) < 2 {
		msgs, _, err := s.Receive()
		if err != nil {
			return nil, nil, fmt.Errorf("read the answers to the clsact qdisc and filter %s: %w", f.Name, err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || (m.Header.Seq != q.Seq && m.Header.Seq != fr.Seq) {
				continue
			}
			if len(m.Data) < 4 {
				return nil, nil, fmt.Errorf("read the answers to the clsact qdisc and filter %s: short error message", f.Name)
			}
			var e error
			if code := int32(nl.NativeEndian().Uint32(m.Data[:4])); code != 0 {
				e = syscall.Errno(-code)
			}
			answers[m.Header.Seq] = e
		}
	}
	return answers[q.Seq], answers[fr.Seq], nil
}

// AddWithQdisc puts f, named as the filter of a qdisc shunt created, on
// its interface together with the clsact qdisc (AddQdiscAndFilter), using
// h (a handle in the namespace at netnsPath) to settle what the kernel
// answered. Where the interface turned out to have a clsact qdisc
// already, another tool's, the filter is renamed to plainName and claims
// nothing; where the filter was refused, the qdisc added with it goes
// again. qdisc reports a failure to add the qdisc, filter one to add the
// filter.
func AddWithQdisc(h *netlink.Handle, netnsPath string, f *netlink.BpfFilter, plainName string) (qdisc, filter error) {
	qerr, ferr, err := AddQdiscAndFilter(netnsPath, f)
	if err != nil {
		return nil, err
	}
	idx := f.LinkIndex
	switch {
	case qerr == nil && ferr != nil:
		_ = h.QdiscDel(Clsact(idx))
	case errors.Is(qerr, unix.EEXIST) && ferr == nil:
		plain := *f
		plain.Name = plainName
		if err := h.FilterReplace(&plain); err != nil {
			_ = h.FilterDel(f)
			return nil, fmt.Errorf("rename filter %s to %s: %w", f.Name, plainName, err)
		}
	case qerr != nil && !errors.Is(qerr, unix.EEXIST):
		if ferr == nil {
			_ = h.FilterDel(f)
		}
		return qerr, nil
	}
	return nil, ferr
}

package ebpf

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/internal/tcbpf"
)

// Inbound SYNs are also steered at tc ingress of each of the workload's
// Ethernet interfaces (inbound_tc), to whatever socket listens on the
// inbound port, MPTCP listeners included, which sk_lookup cannot serve
// (their socket does not go in a SOCKMAP).
//
// The program runs as a cls_bpf filter in direct-action mode on the
// interface's clsact qdisc, not as a TCX link: a TCX attach (and detach)
// waits in the kernel for a normal RCU grace period, 5-20 ms and more as
// the machine gets busier, the largest part of a pod's enrolment; adding a
// filter waits for none, and creating the qdisc for an expedited one at
// most. A filter lives with its device, so nothing is pinned: the filter
// is found again by its fixed place and its name.
const (
	// tcPriority and tcHandle are shunt's place at tc ingress. Priority
	// 10 leaves 1-9 to filters that must run first; shunt's filter hands
	// every packet it does not steer on to the next filter
	// (TC_ACT_UNSPEC).
	tcPriority = 10
	tcHandle   = 1
	// tcFilterName names shunt's filter; tcFilterNameOwnQdisc names it
	// when shunt created the clsact qdisc it sits on, so that the last
	// filter out removes the qdisc too, and only then.
	tcFilterName         = "shunt_inbound_tc"
	tcFilterNameOwnQdisc = "shunt_inbound_tc+clsact"
	// tcPinPrefix names the TCX links earlier versions pinned, one per
	// interface (link_tc_<name>): an install moves them to filters.
	tcPinPrefix = "link_tc_"
)

func inNetns(path string, f func() error) error {
	if path == "" {
		return f()
	}
	return cnins.WithNetNSPath(path, func(cnins.NetNS) error { return f() })
}

// errNetnsGone is returned by rtnl when the namespace no longer exists:
// its devices, and their filters, went with it.
var errNetnsGone = tcbpf.ErrNetnsGone

// rtnl opens an rtnetlink handle in the namespace at path ("" is the
// caller's own), without moving the calling thread.
func rtnl(path string) (*netlink.Handle, error) { return tcbpf.Open(path) }

// tcInterfaces lists the Ethernet interfaces of the namespace (the program
// reads an Ethernet header), loopback aside.
func tcInterfaces(h *netlink.Handle) ([]netlink.Link, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback == 0 && len(a.HardwareAddr) == 6 {
			out = append(out, l)
		}
	}
	return out, nil
}

// openTC opens an rtnetlink handle in the namespace and lists its Ethernet
// interfaces; the caller closes the handle.
func openTC(netnsPath string) (*netlink.Handle, []netlink.Link, error) {
	h, err := rtnl(netnsPath)
	if err != nil {
		return nil, nil, err
	}
	ifs, err := tcInterfaces(h)
	if err != nil {
		h.Close()
		return nil, nil, err
	}
	return h, ifs, nil
}

func isShuntFilter(f *netlink.BpfFilter) bool {
	return f.Name == tcFilterName || f.Name == tcFilterNameOwnQdisc
}

// tcSlot returns the filter at shunt's place at tc ingress of l, nil when
// there is none (or no qdisc); other is set when that place holds a filter
// that is not shunt's.
func tcSlot(h *netlink.Handle, l netlink.Link) (mine *netlink.BpfFilter, other netlink.Filter, err error) {
	fs, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return nil, nil, fmt.Errorf("list tc ingress filters of %s: %w", l.Attrs().Name, err)
	}
	for _, f := range fs {
		a := f.Attrs()
		if a.Priority != tcPriority || a.Handle != tcHandle {
			continue
		}
		if bf, ok := f.(*netlink.BpfFilter); ok && isShuntFilter(bf) {
			return bf, nil, nil
		}
		return nil, f, nil
	}
	return nil, nil, nil
}

func describeFilter(f netlink.Filter) string {
	if bf, ok := f.(*netlink.BpfFilter); ok {
		return fmt.Sprintf("bpf filter %q running program %d", bf.Name, bf.Id)
	}
	return f.Type() + " filter"
}

func shuntFilter(idx int, name string, prog *ebpf.Program) *netlink.BpfFilter {
	return tcbpf.Filter(idx, netlink.HANDLE_MIN_INGRESS, tcPriority, tcHandle, name, prog)
}

// hasIngressQdisc reports whether l has a clsact or ingress qdisc (both
// sit at the ingress parent).
func hasIngressQdisc(h *netlink.Handle, l netlink.Link) (bool, error) {
	qs, err := h.QdiscList(l)
	if err != nil {
		return false, fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS {
			return true, nil
		}
	}
	return false, nil
}

func clsact(idx int) *netlink.GenericQdisc { return tcbpf.Clsact(idx) }

func progID(p *ebpf.Program) ebpf.ProgramID {
	info, err := p.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return id
}

// attachTC puts prog at tc ingress of every Ethernet interface of the
// namespace: a filter where there is none (on the interface's clsact
// qdisc, created if the interface has no ingress qdisc), the program
// swapped in place where shunt's filter is already there. What must be
// undone if the install fails goes on undo. Another tool's filter at
// shunt's place is an error: it is never replaced.
func attachTC(log *slog.Logger, netnsPath string, prog *ebpf.Program, undo *[]func()) error {
	h, ifs, err := openTC(netnsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	want := progID(prog)
	for _, l := range ifs {
		name, idx := l.Attrs().Name, l.Attrs().Index
		mine, other, err := tcSlot(h, l)
		if err != nil {
			return err
		}
		switch {
		case other != nil:
			return fmt.Errorf("tc ingress of %s: priority %d handle %d holds another tool's %s; shunt's inbound_tc goes there", name, tcPriority, tcHandle, describeFilter(other))
		case mine != nil && ebpf.ProgramID(mine.Id) == want && mine.DirectAction:
			continue
		case mine != nil:
			// Swapped in place (RTM_NEWTFILTER without NLM_F_EXCL on
			// the same place): no packet misses a filter.
			if err := h.FilterReplace(shuntFilter(idx, mine.Name, prog)); err != nil {
				return fmt.Errorf("replace inbound_tc filter on %s: %w", name, err)
			}
			old, ownQdisc := ebpf.ProgramID(mine.Id), mine.Name
			*undo = append(*undo, func() {
				p, perr := ebpf.NewProgramFromID(old)
				if perr != nil {
					return
				}
				defer p.Close()
				if rerr := withRtnl(netnsPath, func(h *netlink.Handle) error {
					return h.FilterReplace(shuntFilter(idx, ownQdisc, p))
				}); rerr != nil {
					log.Error("restore inbound_tc filter", "interface", name, "err", rerr)
				}
			})
			continue
		}
		if err := addFilter(h, netnsPath, l, prog); err != nil {
			return err
		}
		*undo = append(*undo, func() {
			if rerr := withRtnl(netnsPath, func(h *netlink.Handle) error { return removeFilter(h, l) }); rerr != nil {
				log.Error("remove inbound_tc filter", "interface", name, "err", rerr)
			}
		})
	}
	return nil
}

// addFilter puts shunt's filter running prog at tc ingress of l, which has
// none: on the interface's clsact or ingress qdisc, another tool's, kept as
// it is; or, where there is none, on a clsact qdisc created with the
// filter in one write (see internal/tcbpf), the filter named so that the
// last filter out removes the qdisc too.
func addFilter(h *netlink.Handle, netnsPath string, l netlink.Link, prog *ebpf.Program) error {
	name, idx := l.Attrs().Name, l.Attrs().Index
	has, err := hasIngressQdisc(h, l)
	if err != nil {
		return err
	}
	var ferr error
	if has {
		ferr = h.FilterAdd(shuntFilter(idx, tcFilterName, prog))
	} else {
		// Another tool may add a qdisc after the check: then the
		// filter is renamed and claims it not.
		var qerr error
		qerr, ferr = tcbpf.AddWithQdisc(h, netnsPath, shuntFilter(idx, tcFilterNameOwnQdisc, prog), tcFilterName)
		if qerr != nil {
			return fmt.Errorf("add clsact qdisc to %s: %w", name, qerr)
		}
	}
	if ferr != nil {
		return fmt.Errorf("add inbound_tc filter to tc ingress of %s (priority %d): %w", name, tcPriority, ferr)
	}
	return nil
}

// withRtnl runs f with an rtnetlink handle in the namespace; a namespace gone
// is nothing to do.
func withRtnl(netnsPath string, f func(h *netlink.Handle) error) error {
	h, err := rtnl(netnsPath)
	if errors.Is(err, errNetnsGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	return f(h)
}

// removeFilter removes shunt's filter from tc ingress of l, and the clsact
// qdisc when shunt created it and no filter is left on it, in either
// direction.
func removeFilter(h *netlink.Handle, l netlink.Link) error {
	mine, _, err := tcSlot(h, l)
	if err != nil || mine == nil {
		return err
	}
	name := l.Attrs().Name
	if err := h.FilterDel(shuntFilter(l.Attrs().Index, mine.Name, nil)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete inbound_tc filter of %s: %w", name, err)
	}
	if mine.Name != tcFilterNameOwnQdisc {
		return nil
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := h.FilterList(l, parent)
		if err != nil {
			return fmt.Errorf("list tc filters of %s: %w", name, err)
		}
		if len(fs) > 0 {
			return nil // another tool's filters: its qdisc now
		}
	}
	if err := h.QdiscDel(clsact(l.Attrs().Index)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete the clsact qdisc shunt added to %s: %w", name, err)
	}
	return nil
}

// removeTC removes shunt's filter from every interface of the namespace.
// found says whether there was any. A namespace gone took them with it.
func removeTC(netnsPath string) (found bool, errs []error) {
	h, err := rtnl(netnsPath)
	if errors.Is(err, errNetnsGone) {
		return false, nil
	}
	if err != nil {
		return false, []error{err}
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return false, []error{fmt.Errorf("list interfaces: %w", err)}
	}
	for _, l := range links {
		mine, _, err := tcSlot(h, l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if mine == nil {
			continue
		}
		found = true
		if err := removeFilter(h, l); err != nil {
			errs = append(errs, err)
		}
	}
	return found, errs
}

// tcCheck says what is wrong with the program a filter runs ("" when it is
// the one expected).
type tcCheck func(id ebpf.ProgramID) string

// checkProgID expects program want.
func checkProgID(want ebpf.ProgramID) tcCheck {
	return func(id ebpf.ProgramID) string {
		if id != want {
			return fmt.Sprintf("runs program %d, not the node's %d", id, want)
		}
		return ""
	}
}

// checkProgMaps expects a program named inbound_tc that uses the map
// pinned at mapPin (so it is this installation's).
func checkProgMaps(mapPin string) tcCheck {
	return func(id ebpf.ProgramID) string {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			return fmt.Sprintf("program %d: %v", id, err)
		}
		defer p.Close()
		info, err := p.Info()
		if err != nil {
			return fmt.Sprintf("program %d: %v", id, err)
		}
		if info.Name != "inbound_tc" {
			return fmt.Sprintf("runs program %d (%q), not inbound_tc", id, info.Name)
		}
		m, err := ebpf.LoadPinnedMap(mapPin, nil)
		if err != nil {
			return ""
		}
		defer m.Close()
		mi, err := m.Info()
		if err != nil {
			return ""
		}
		want, _ := mi.ID()
		ids, ok := info.MapIDs()
		if !ok {
			return ""
		}
		for _, mid := range ids {
			if mid == want {
				return ""
			}
		}
		return fmt.Sprintf("runs program %d, an inbound_tc of another installation (it does not use %s)", id, mapPin)
	}
}

// tcStatus reports shunt's filter on every Ethernet interface of the
// namespace: a line each, and what differs from inbound_tc attached on
// all of them, running a program check accepts. A TCX link an earlier
// version pinned in dir is reported, not drift: install moves it.
func tcStatus(netnsPath, dir string, check tcCheck) (lines, drift, notes []string) {
	h, ifs, err := openTC(netnsPath)
	if err != nil {
		return nil, []string{"inbound_tc: " + err.Error()}, nil
	}
	defer h.Close()
	for _, l := range ifs {
		name := l.Attrs().Name
		where := fmt.Sprintf("tc ingress of %s (priority %d, handle %d)", name, tcPriority, tcHandle)
		mine, other, err := tcSlot(h, l)
		switch {
		case err != nil:
			drift = append(drift, "inbound_tc: "+err.Error())
		case other != nil:
			drift = append(drift, fmt.Sprintf("inbound_tc: %s holds another %s, not shunt's filter", where, describeFilter(other)))
			lines = append(lines, fmt.Sprintf("%-15s %-28s %s REPLACED", "inbound_tc", "tc ingress "+name, describeFilter(other)))
		case mine == nil:
			if l, lerr := link.LoadPinnedLink(filepath.Join(dir, tcPinPrefix+name), nil); lerr == nil {
				info, ierr := l.Info()
				l.Close()
				if ierr == nil {
					notes = append(notes, fmt.Sprintf("inbound_tc on %s is a TCX link pinned by an earlier version (%s%s); install again to move it to a tc filter", name, tcPinPrefix, name))
					lines = append(lines, fmt.Sprintf("%-15s %-28s link %d prog %d attached (TCX)", "inbound_tc", "tcx ingress "+name, info.ID, info.Program))
					continue
				}
			}
			drift = append(drift, fmt.Sprintf("inbound_tc: no filter at %s", where))
			lines = append(lines, fmt.Sprintf("%-15s %-28s MISSING", "inbound_tc", "tc ingress "+name))
		default:
			state := "attached"
			if why := check(ebpf.ProgramID(mine.Id)); why != "" {
				state = "REPLACED"
				drift = append(drift, fmt.Sprintf("inbound_tc: the filter at %s %s", where, why))
			} else if !mine.DirectAction {
				state = "REPLACED"
				drift = append(drift, fmt.Sprintf("inbound_tc: the filter at %s is not in direct-action mode", where))
			}
			lines = append(lines, fmt.Sprintf("%-15s %-28s filter %q prog %d %s", "inbound_tc", "tc ingress "+name, mine.Name, mine.Id, state))
		}
	}
	return lines, drift, notes
}

// tcAttached reports whether every Ethernet interface of the namespace has
// shunt's filter, running a program check accepts.
func tcAttached(netnsPath string, check tcCheck) bool {
	h, ifs, err := openTC(netnsPath)
	if err != nil {
		return false
	}
	defer h.Close()
	for _, l := range ifs {
		mine, _, err := tcSlot(h, l)
		if err != nil || mine == nil || !mine.DirectAction || check(ebpf.ProgramID(mine.Id)) != "" {
			return false
		}
	}
	return true
}

// updateTC points shunt's filters in the namespace at prog (the node's
// programs were loaded again), where they are.
func updateTC(netnsPath string, prog *ebpf.Program) error {
	h, ifs, err := openTC(netnsPath)
	if errors.Is(err, errNetnsGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	want := progID(prog)
	for _, l := range ifs {
		mine, _, err := tcSlot(h, l)
		if err != nil {
			return err
		}
		if mine == nil || ebpf.ProgramID(mine.Id) == want {
			continue
		}
		if err := h.FilterReplace(shuntFilter(l.Attrs().Index, mine.Name, prog)); err != nil {
			return fmt.Errorf("replace inbound_tc filter on %s: %w", l.Attrs().Name, err)
		}
	}
	return nil
}

// hasTCLinks reports whether an earlier version pinned TCX links in dir.
func hasTCLinks(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), tcPinPrefix) {
			return true
		}
	}
	return false
}

// updateTCLinks points the TCX links an earlier version pinned in dir at
// prog, for a pod whose namespace is not known (so not moved to filters).
func updateTCLinks(dir string, prog *ebpf.Program) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, ent := range ents {
		if !strings.HasPrefix(ent.Name(), tcPinPrefix) {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, ent.Name()), nil)
		if err != nil {
			continue
		}
		err = l.Update(prog)
		l.Close()
		if err != nil {
			return fmt.Errorf("update link %s: %w", ent.Name(), err)
		}
	}
	return nil
}

// removeTCLinks detaches and unpins the TCX links an earlier version
// pinned in dir.
func removeTCLinks(log *slog.Logger, dir string) (found bool, errs []error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, nil
	}
	for _, ent := range ents {
		if !strings.HasPrefix(ent.Name(), tcPinPrefix) {
			continue
		}
		found = true
		pin := filepath.Join(dir, ent.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open pinned link %s: %w", ent.Name(), err))
			_ = os.Remove(pin)
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", ent.Name(), err))
		}
		detach(log, l, ent.Name())
	}
	return found, errs
}

func detach(log *slog.Logger, l link.Link, what string) {
	if rl, ok := l.(interface{ Detach() error }); ok {
		if err := rl.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Debug("detach link", "link", what, "err", err)
		}
	}
	l.Close()
}

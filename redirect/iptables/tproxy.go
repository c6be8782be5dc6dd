package iptables

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
)

// TPROXY inbound capture needs, besides its rules, a policy route: packets
// carrying the mark (TPROXY's, and the application's replies on the proxy's
// original-source connections) are delivered to the local stack, whatever
// their destination. shunt writes it through netlink, in the target
// namespace, as "fwmark MARK lookup TABLE" and "local default dev lo table
// TABLE" in each family it captures.

// netlinkHandle opens a netlink handle in the engine's namespace.
func (e *Engine) netlinkHandle() (*netlink.Handle, error) {
	if e.opts.NetnsPath == "" {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	ns, err := netns.GetFromPath(e.opts.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", e.opts.NetnsPath, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
}

func nlFamily(f family) int {
	if f.v6() {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

func tproxyRule(t *redirect.TProxy, f family) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = nlFamily(f)
	r.Mark = t.Mark
	mask := uint32(0xffffffff)
	r.Mask = &mask
	r.Table = int(t.RouteTable)
	return r
}

func tproxyRoute(t *redirect.TProxy, f family, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if f.v6() {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{Family: nlFamily(f), LinkIndex: lo, Dst: dst, Table: int(t.RouteTable), Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
}

func hasTProxyRule(h *netlink.Handle, t *redirect.TProxy, f family) (bool, error) {
	rules, err := h.RuleList(nlFamily(f))
	if err != nil {
		return false, fmt.Errorf("list %s policy rules: %w", f, err)
	}
	for _, r := range rules {
		if r.Mark == t.Mark && r.Table == int(t.RouteTable) && (r.Mask == nil || *r.Mask == 0xffffffff) {
			return true, nil
		}
	}
	return false, nil
}

func hasTProxyRoute(h *netlink.Handle, t *redirect.TProxy, f family, lo int) (bool, error) {
	routes, err := h.RouteListFiltered(nlFamily(f), &netlink.Route{Table: int(t.RouteTable)}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, fmt.Errorf("list %s routes of table %d: %w", f, t.RouteTable, err)
	}
	for _, r := range routes {
		if r.Type == unix.RTN_LOCAL && r.LinkIndex == lo && (r.Dst == nil || isDefault(r.Dst)) {
			return true, nil
		}
	}
	return false, nil
}

func isDefault(n *net.IPNet) bool { ones, _ := n.Mask.Size(); return ones == 0 }

func loopbackIndex(h *netlink.Handle) (int, error) {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return 0, fmt.Errorf("find the loopback interface: %w", err)
	}
	return lo.Attrs().Index, nil
}

// ensureTProxyRoutes adds the policy rule and the local route of each
// family where missing, and returns what undoes exactly those additions.
func (e *Engine) ensureTProxyRoutes(t *redirect.TProxy, fams []family) (undo func(), err error) {
	h, err := e.netlinkHandle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	lo, err := loopbackIndex(h)
	if err != nil {
		return nil, err
	}
	var routes []*netlink.Route
	var rules []*netlink.Rule
	undo = func() {
		h, err := e.netlinkHandle()
		if err != nil {
			e.log.Warn("could not undo the TPROXY routes", "err", err)
			return
		}
		defer h.Close()
		for _, r := range rules {
			_ = h.RuleDel(r)
		}
		for _, r := range routes {
			_ = h.RouteDel(r)
		}
	}
	fail := func(err error) (func(), error) { undo(); return nil, err }
	for _, f := range fams {
		ok, err := hasTProxyRoute(h, t, f, lo)
		if err != nil {
			return fail(err)
		}
		if !ok {
			rt := tproxyRoute(t, f, lo)
			if err := h.RouteAdd(rt); err != nil {
				return fail(fmt.Errorf("add %s route local default dev lo table %d: %w", f, t.RouteTable, err))
			}
			routes = append(routes, rt)
		}
		ok, err = hasTProxyRule(h, t, f)
		if err != nil {
			return fail(err)
		}
		if !ok {
			rule := tproxyRule(t, f)
			if err := h.RuleAdd(rule); err != nil {
				return fail(fmt.Errorf("add %s policy rule fwmark %#x lookup %d: %w", f, t.Mark, t.RouteTable, err))
			}
			rules = append(rules, rule)
		}
	}
	return undo, nil
}

// removeTProxyRoutes deletes the policy rule and the local route of old in
// each family, except what keep (the plan now installed, in keepFams) still
// uses; what is already gone is not an error.
func (e *Engine) removeTProxyRoutes(old *redirect.TProxy, keep *redirect.TProxy, keepFams []family) error {
	h, err := e.netlinkHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := loopbackIndex(h)
	if err != nil {
		return err
	}
	var errs error
	for _, f := range []family{ipv4, ipv6} {
		kept := keep != nil && contains(familyNames(keepFams), string(f))
		if !(kept && *keep == *old) {
			if ok, err := hasTProxyRule(h, old, f); err != nil {
				errs = errors.Join(errs, err)
			} else if ok {
				if err := h.RuleDel(tproxyRule(old, f)); err != nil {
					errs = errors.Join(errs, fmt.Errorf("delete %s policy rule fwmark %#x lookup %d: %w", f, old.Mark, old.RouteTable, err))
				}
			}
		}
		if !(kept && keep.RouteTable == old.RouteTable) {
			if ok, err := hasTProxyRoute(h, old, f, lo); err != nil {
				errs = errors.Join(errs, err)
			} else if ok {
				if err := h.RouteDel(tproxyRoute(old, f, lo)); err != nil {
					errs = errors.Join(errs, fmt.Errorf("delete %s route local default table %d: %w", f, old.RouteTable, err))
				}
			}
		}
	}
	return errs
}

// tproxyDrift reports the policy rules and local routes of t missing in
// the namespace, one line each.
func (e *Engine) tproxyDrift(t *redirect.TProxy, fams []family) ([]string, error) {
	h, err := e.netlinkHandle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	lo, err := loopbackIndex(h)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range fams {
		if ok, err := hasTProxyRule(h, t, f); err != nil {
			return nil, err
		} else if !ok {
			out = append(out, fmt.Sprintf("%s: policy rule fwmark %#x lookup %d is missing", f, t.Mark, t.RouteTable))
		}
		if ok, err := hasTProxyRoute(h, t, f, lo); err != nil {
			return nil, err
		} else if !ok {
			out = append(out, fmt.Sprintf("%s: route local default dev lo table %d is missing", f, t.RouteTable))
		}
	}
	return out, nil
}

func intentPlan(st *redirect.State) *redirect.Plan {
	if st.Intent == nil {
		return nil
	}
	return st.Intent.Plan
}

func familyNames(fs []family) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = string(f)
	}
	return out
}

// Package tproxyroute writes the policy route TPROXY inbound capture needs,
// for every netfilter engine: packets carrying the TPROXY mark (TPROXY's
// own, and the application's replies on the proxy's original-source
// connections) are delivered to the local stack, whatever their
// destination. It is "fwmark MARK lookup TABLE" and "local default dev lo
// table TABLE" in each family captured, written through netlink in the
// target namespace (no ip command).
package tproxyroute

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
)

// Families are named as in records: "ipv4", "ipv6".
const (
	IPv4 = "ipv4"
	IPv6 = "ipv6"
)

// handle opens a netlink handle in the namespace at path ("": the current
// one).
func handle(path string) (*netlink.Handle, error) {
	if path == "" {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
}

func nlFamily(f string) int {
	if f == IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

func rule(t *redirect.TProxy, f string) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = nlFamily(f)
	r.Mark = t.Mark
	mask := uint32(0xffffffff)
	r.Mask = &mask
	r.Table = int(t.RouteTable)
	return r
}

func route(t *redirect.TProxy, f string, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if f == IPv6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{Family: nlFamily(f), LinkIndex: lo, Dst: dst, Table: int(t.RouteTable), Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
}

func hasRule(h *netlink.Handle, t *redirect.TProxy, f string) (bool, error) {
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

func hasRoute(h *netlink.Handle, t *redirect.TProxy, f string, lo int) (bool, error) {
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

// Ensure adds the policy rule and the local route of each family where
// missing, in the namespace at path, and returns what undoes exactly those
// additions.
func Ensure(path string, t *redirect.TProxy, fams []string, log *slog.Logger) (undo func(), err error) {
	h, err := handle(path)
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
		h, err := handle(path)
		if err != nil {
			log.Warn("could not undo the TPROXY routes", "err", err)
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
		ok, err := hasRoute(h, t, f, lo)
		if err != nil {
			return fail(err)
		}
		if !ok {
			rt := route(t, f, lo)
			if err := h.RouteAdd(rt); err != nil {
				return fail(fmt.Errorf("add %s route local default dev lo table %d: %w", f, t.RouteTable, err))
			}
			routes = append(routes, rt)
		}
		ok, err = hasRule(h, t, f)
		if err != nil {
			return fail(err)
		}
		if !ok {
			r := rule(t, f)
			if err := h.RuleAdd(r); err != nil {
				return fail(fmt.Errorf("add %s policy rule fwmark %#x lookup %d: %w", f, t.Mark, t.RouteTable, err))
			}
			rules = append(rules, r)
		}
	}
	return undo, nil
}

// Remove deletes the policy rule and the local route of old in each
// family, except what keep (the plan now installed, in keepFams) still
// uses; what is already gone is not an error.
func Remove(path string, old, keep *redirect.TProxy, keepFams []string) error {
	h, err := handle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := loopbackIndex(h)
	if err != nil {
		return err
	}
	var errs error
	for _, f := range []string{IPv4, IPv6} {
		kept := keep != nil && slices.Contains(keepFams, f)
		if !(kept && *keep == *old) {
			if ok, err := hasRule(h, old, f); err != nil {
				errs = errors.Join(errs, err)
			} else if ok {
				if err := h.RuleDel(rule(old, f)); err != nil {
					errs = errors.Join(errs, fmt.Errorf("delete %s policy rule fwmark %#x lookup %d: %w", f, old.Mark, old.RouteTable, err))
				}
			}
		}
		if !(kept && keep.RouteTable == old.RouteTable) {
			if ok, err := hasRoute(h, old, f, lo); err != nil {
				errs = errors.Join(errs, err)
			} else if ok {
				if err := h.RouteDel(route(old, f, lo)); err != nil {
					errs = errors.Join(errs, fmt.Errorf("delete %s route local default table %d: %w", f, old.RouteTable, err))
				}
			}
		}
	}
	return errs
}

// Drift reports the policy rules and local routes of t missing in the
// namespace at path, one line each.
func Drift(path string, t *redirect.TProxy, fams []string) ([]string, error) {
	h, err := handle(path)
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
		if ok, err := hasRule(h, t, f); err != nil {
			return nil, err
		} else if !ok {
			out = append(out, fmt.Sprintf("%s: policy rule fwmark %#x lookup %d is missing", f, t.Mark, t.RouteTable))
		}
		if ok, err := hasRoute(h, t, f, lo); err != nil {
			return nil, err
		} else if !ok {
			out = append(out, fmt.Sprintf("%s: route local default dev lo table %d is missing", f, t.RouteTable))
		}
	}
	return out, nil
}

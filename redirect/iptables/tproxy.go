package iptables

import (
	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/tproxyroute"
)

// TPROXY inbound capture needs, besides its rules, a policy route that
// delivers marked packets to the local stack; package tproxyroute writes
// it, for this engine and the nftables one alike.

// ensureTProxyRoutes adds the policy rule and the local route of each
// family where missing, and returns what undoes exactly those additions.
func (e *Engine) ensureTProxyRoutes(t *redirect.TProxy, fams []family) (undo func(), err error) {
	return tproxyroute.Ensure(e.opts.NetnsPath, t, familyNames(fams), e.log)
}

// removeTProxyRoutes deletes the policy rule and the local route of old in
// each family, except what keep (the plan now installed, in keepFams) still
// uses; what is already gone is not an error.
func (e *Engine) removeTProxyRoutes(old *redirect.TProxy, keep *redirect.TProxy, keepFams []family) error {
	return tproxyroute.Remove(e.opts.NetnsPath, old, keep, familyNames(keepFams))
}

// tproxyDrift reports the policy rules and local routes of t missing in
// the namespace, one line each.
func (e *Engine) tproxyDrift(t *redirect.TProxy, fams []family) ([]string, error) {
	return tproxyroute.Drift(e.opts.NetnsPath, t, familyNames(fams))
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

// Package agent is shunt's node agent: it keeps a workload's capture rules,
// DNS interceptor and egress lockdown in line with the agent snapshots an
// xDS source delivers, repairs the rules when someone else changes them, and
// reports what it does on a loopback admin endpoint.
//
// The agent owns no sockets to the control plane and no kernel code of its
// own: the snapshot source (xdsclient), the capture engine (redirect) and the
// DNS server (dnsproxy) are given to it, so that it can be tested with fakes
// and embedded by `shunt run` with the real ones.
package agent

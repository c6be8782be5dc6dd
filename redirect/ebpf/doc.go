// Package ebpf is shunt's eBPF capture engine: it implements a redirect.Plan
// with cgroup socket hooks (connect, sendmsg, recvmsg, getsockopt, sockops)
// attached to the workload's cgroup-v2 directory and an sk_lookup program
// attached to its network namespace, all through bpf_link and pinned on
// bpffs so that capture outlives the agent. docs/ebpf.md describes the
// design; the programs are in bpf/.
package ebpf

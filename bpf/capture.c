// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * shunt's eBPF capture. The decisions follow redirect.Plan.Explain rule for
 * rule; see docs/ebpf.md for how the programs fit together.
 *
 *   connect4/6     outbound TCP (and connected UDP DNS) of the cgroup
 *   sendmsg4/6     unconnected UDP: DNS redirect, egress lockdown
 *   recvmsg4/6     DNS replies get the resolver's address back
 *   sockops        remembers, per proxy-side peer, the original destination
 *   getsockopt     answers SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST from it
 *   sk_lookup      steers inbound TCP to the proxy's inbound listener
 *   bind4/6        keeps the captured ports and the admin port for the
 *                  proxy and shunt
 *
 * The programs themselves are in capture_common.h, shared with
 * capture_node.c; this file holds the maps of one cgroup and the functions
 * through which the programs read them.
 */
#include "capture.h"

#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config_map SEC(".maps");

/* Indexed by port (host order); PORT_EXCLUDE_* bits. An array keeps the
 * lookup O(1) however many ranges the plan lists. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} port_flags SEC(".maps");

#define LPM_MAP(name, n)                                                       \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                           \
		__uint(max_entries, n);                                        \
		__type(key, struct lpm_key);                                   \
		__type(value, __u8);                                           \
		__uint(map_flags, BPF_F_NO_PREALLOC);                          \
	} name SEC(".maps")

LPM_MAP(exclude_out_cidrs, 65536);
LPM_MAP(exclude_in_cidrs, 65536);
LPM_MAP(include_out_cidrs, 65536);
/* Egress.Allowed and MeshCIDRs, when egress is locked down. */
LPM_MAP(egress_allowed, 65536);

/* Egress.Endpoints, when egress is locked down: TCP to this address and
 * port. A map of its own, so the trie's layout stays as pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct endpoint);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} egress_endpoints SEC(".maps");

/* The workload's own addresses: a destination among them is reached over
 * the loopback interface, as Plan.Explain's Iface "lo". */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct addr);
	__type(value, __u8);
} local_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct addr);
	__type(value, __u8);
} dns_servers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_UID_RULES);
	__type(key, __u32);
	__type(value, struct uid_rule);
} uid_rules SEC(".maps");

/* The proxy's inbound listener: 0 for IPv4, 1 for IPv6. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} inbound_listener SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* The object serves one cgroup, so one pod: its configuration is the one
 * entry of config_map, and every other map is its alone. */
struct pod {
	struct config *cfg;
};

#define PEER_KEY struct peer_key
#define ORIG_ENTRIES 65536
#define DNS_QUERIES_ENTRIES 16384

#include "capture_common.h"

static __always_inline int task_pod(struct pod *p)
{
	__u32 zero = 0;
	p->cfg = bpf_map_lookup_elem(&config_map, &zero);
	return p->cfg != NULL;
}

static __always_inline int skb_pod(struct __sk_buff *skb, struct pod *p)
{
	return task_pod(p);
}

static __always_inline int inbound_pod(struct pod *p, const struct addr *local)
{
	return task_pod(p);
}

static __always_inline void count(struct pod *p, __u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &which);
	if (n)
		(*n)++;
}

static __always_inline int pod_local_addr(struct pod *p, const struct addr *a)
{
	return bpf_map_lookup_elem(&local_addrs, a) != NULL;
}

static __always_inline int pod_dns_server(struct pod *p, const struct addr *a)
{
	return bpf_map_lookup_elem(&dns_servers, a) != NULL;
}

static __always_inline int pod_endpoint(struct pod *p, const struct endpoint *e)
{
	return bpf_map_lookup_elem(&egress_endpoints, e) != NULL;
}

static __always_inline void *pod_trie(struct pod *p, enum trie which)
{
	switch (which) {
	case TRIE_EXCLUDE_OUT:
		return &exclude_out_cidrs;
	case TRIE_EXCLUDE_IN:
		return &exclude_in_cidrs;
	case TRIE_INCLUDE_OUT:
		return &include_out_cidrs;
	default:
		return &egress_allowed;
	}
}

static __always_inline int pod_port_has(struct pod *p, __u16 port, __u8 flag)
{
	__u32 k = port;
	__u8 *f = bpf_map_lookup_elem(&port_flags, &k);
	return f && (*f & flag);
}

static __always_inline struct uid_rule *pod_uid_rule(struct pod *p, __u32 i)
{
	return bpf_map_lookup_elem(&uid_rules, &i);
}

static __always_inline struct bpf_sock *pod_listener(struct pod *p, int v6)
{
	__u32 key = v6;
	return bpf_map_lookup_elem(&inbound_listener, &key);
}

/* One network namespace: the peer address alone is the key. */
static __always_inline void peer_set_netns(struct peer_key *k, void *ctx)
{
}


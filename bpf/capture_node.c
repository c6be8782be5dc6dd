// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * shunt's node-wide eBPF capture: one copy of the programs per node,
 * attached to every enrolled pod's cgroup (and sk_lookup to every pod's
 * network namespace). The decisions are capture.c's, rule for rule; what
 * differs is where the configuration comes from: each program finds its pod
 * first and reads that pod's entries.
 *
 *   socket hooks   the pod is the enrolled cgroup of the calling task (the
 *                  task's own cgroup or its nearest enrolled ancestor:
 *                  containers run in child cgroups of the pod's)
 *   packet hooks   the same, from the packet's socket
 *   sk_lookup      the pod that owns the connection's local address: this
 *                  kernel gives sk_lookup programs no netns cookie, and a
 *                  pod's addresses are its own on a node
 *   sockops,       the proxy-side peer address is per network namespace
 *   getsockopt     (127.0.0.1:port exists in every pod), so it is keyed by
 *                  the netns cookie as well
 *
 * Socket-cookie keyed state (original destinations, DNS queries) is shared:
 * cookies are unique on the host.
 *
 * The programs themselves are in capture_common.h, shared with capture.c;
 * this file holds the node's maps and the functions through which the
 * programs find a pod and read its entries.
 */
#include "capture.h"

#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define MAX_PODS 4096
/* Cgroup levels walked to find the enrolled ancestor of a task's cgroup. */
#define MAX_CGROUP_DEPTH 16

/* An address of one pod. */
struct pod_addr {
	__u64 pod; /* cgroup id */
	struct addr a;
};

/* An egress endpoint of one pod. */
struct pod_endpoint {
	__u64 pod; /* cgroup id */
	struct endpoint e;
	__u32 pad;
};

struct pod_rule {
	__u64 pod;
	__u32 index;
	__u32 pad;
};

struct pod_peer {
	__u64 netns; /* netns cookie */
	__u32 ip[4];
	__u32 port; /* host byte order */
	__u32 pad;
};

struct pod_listener {
	__u64 pod;
	__u32 family; /* 0 IPv4, 1 IPv6 */
	__u32 pad;
};

struct pod_stats {
	__u64 n[STAT_MAX];
};

/* The digest of the object the loaded programs came from. */
struct node_meta {
	__u8 digest[32];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_meta);
} node_info SEC(".maps");

/* Per-pod configuration by cgroup id: present means enrolled. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, __u64);
	__type(value, struct config);
} pods SEC(".maps");

struct ports_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u8));
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, MAX_PODS);
	__type(key, __u64);
	__array(values, struct ports_inner);
} pod_port_flags SEC(".maps");

/* Sizes rather than types: BTF would only carry a forward declaration of
 * a type seen through the outer map's pointer. */
struct lpm_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(key_size, sizeof(struct lpm_key));
	__uint(value_size, sizeof(__u8));
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

#define POD_TRIES(name)                                                        \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);                       \
		__uint(max_entries, MAX_PODS);                                 \
		__type(key, __u64);                                            \
		__array(values, struct lpm_inner);                             \
	} name SEC(".maps")

POD_TRIES(pod_exclude_out_cidrs);
POD_TRIES(pod_exclude_in_cidrs);
POD_TRIES(pod_include_out_cidrs);
POD_TRIES(pod_egress_allowed);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pod_addr);
	__type(value, __u8);
} pod_local_addrs SEC(".maps");

/* Each pod's Egress.Endpoints: a flat map keyed by the pod, as its
 * addresses are; a new map, so the pinned ones keep their layout. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pod_endpoint);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pod_egress_endpoints SEC(".maps");

/* The owner of each enrolled pod's addresses, for sk_lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr);
	__type(value, __u64);
} addr_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pod_addr);
	__type(value, __u8);
} pod_dns_servers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pod_rule);
	__type(value, struct uid_rule);
} pod_uid_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * MAX_PODS);
	__type(key, struct pod_listener);
	__type(value, __u64);
} inbound_listener SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, __u64);
	__type(value, struct pod_stats);
} stats SEC(".maps");

/* One enrolled pod, as a program sees it. */
struct pod {
	__u64 id;
	struct config *cfg;
	struct pod_stats *stats;
};

#define PEER_KEY struct pod_peer
#define ORIG_ENTRIES 262144
#define DNS_QUERIES_ENTRIES 65536

#include "capture_common.h"

static __always_inline int pod_of(struct pod *p, __u64 id)
{
	p->cfg = bpf_map_lookup_elem(&pods, &id);
	if (!p->cfg)
		return 0;
	p->id = id;
	p->stats = bpf_map_lookup_elem(&stats, &id);
	return 1;
}

/* The enrolled cgroup of the calling task: its own, or the shallowest
 * enrolled ancestor. */
static __always_inline int task_pod(struct pod *p)
{
	if (pod_of(p, bpf_get_current_cgroup_id()))
		return 1;
	for (int level = 1; level < MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		if (pod_of(p, id))
			return 1;
	}
	return 0;
}

static __always_inline int skb_pod(struct __sk_buff *skb, struct pod *p)
{
	if (pod_of(p, bpf_skb_cgroup_id(skb)))
		return 1;
	for (int level = 1; level < MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
		if (!id)
			break;
		if (pod_of(p, id))
			return 1;
	}
	return 0;
}

static __always_inline void count(struct pod *p, __u32 which)
{
	if (p->stats && which < STAT_MAX)
		p->stats->n[which]++;
}

/* The pod that owns local, the address a new inbound connection is for. */
static __always_inline int inbound_pod(struct pod *p, const struct addr *local)
{
	__u64 *owner = bpf_map_lookup_elem(&addr_pods, local);
	return owner && pod_of(p, *owner);
}

static __always_inline int pod_has_addr(void *m, struct pod *p, const struct addr *a)
{
	struct pod_addr k = {.pod = p->id, .a = *a};
	return bpf_map_lookup_elem(m, &k) != NULL;
}

static __always_inline int pod_local_addr(struct pod *p, const struct addr *a)
{
	return pod_has_addr(&pod_local_addrs, p, a);
}

static __always_inline int pod_dns_server(struct pod *p, const struct addr *a)
{
	return pod_has_addr(&pod_dns_servers, p, a);
}

static __always_inline int pod_endpoint(struct pod *p, const struct endpoint *e)
{
	struct pod_endpoint k = {.pod = p->id, .e = *e};
	return bpf_map_lookup_elem(&pod_egress_endpoints, &k) != NULL;
}

/* The pod's trie from one of the pod_* maps of maps. */
static __always_inline void *pod_trie(struct pod *p, enum trie which)
{
	switch (which) {
	case TRIE_EXCLUDE_OUT:
		return bpf_map_lookup_elem(&pod_exclude_out_cidrs, &p->id);
	case TRIE_EXCLUDE_IN:
		return bpf_map_lookup_elem(&pod_exclude_in_cidrs, &p->id);
	case TRIE_INCLUDE_OUT:
		return bpf_map_lookup_elem(&pod_include_out_cidrs, &p->id);
	default:
		return bpf_map_lookup_elem(&pod_egress_allowed, &p->id);
	}
}

static __always_inline int pod_port_has(struct pod *p, __u16 port, __u8 flag)
{
	void *ports = bpf_map_lookup_elem(&pod_port_flags, &p->id);
	if (!ports)
		return 0;
	__u32 k = port;
	__u8 *f = bpf_map_lookup_elem(ports, &k);
	return f && (*f & flag);
}

static __always_inline struct uid_rule *pod_uid_rule(struct pod *p, __u32 i)
{
	struct pod_rule k = {.pod = p->id, .index = i};
	return bpf_map_lookup_elem(&pod_uid_rules, &k);
}

static __always_inline struct bpf_sock *pod_listener(struct pod *p, int v6)
{
	struct pod_listener k = {.pod = p->id, .family = v6};
	return bpf_map_lookup_elem(&inbound_listener, &k);
}

/* 127.0.0.1:<port> exists in every pod: the netns cookie tells them apart. */
static __always_inline void peer_set_netns(struct pod_peer *k, void *ctx)
{
	k->netns = bpf_get_netns_cookie(ctx);
}

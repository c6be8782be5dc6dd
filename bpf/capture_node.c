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
 */
#include "capture.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define READ(x) (*(volatile typeof(x) *)&(x))

#define MAX_PODS 4096
/* Cgroup levels walked to find the enrolled ancestor of a task's cgroup. */
#define MAX_CGROUP_DEPTH 16

/* An address of one pod. */
struct pod_addr {
	__u64 pod; /* cgroup id */
	struct addr a;
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
POD_TRIES(pod_egress_allowed);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pod_addr);
	__type(value, __u8);
} pod_local_addrs SEC(".maps");

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
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct orig_dst);
} cookie_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pod_peer);
	__type(value, struct orig_dst);
} peer_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dns_state);
} dns_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dns_key);
	__type(value, struct orig_dst);
} dns_queries SEC(".maps");

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

enum verdict {
	PASS,
	REJECT,
	REDIRECT_OUT,
	REDIRECT_IN,
	REDIRECT_DNS,
};

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

static __always_inline void addr_from4(struct addr *a, __u32 ip4)
{
	a->ip[0] = 0;
	a->ip[1] = 0;
	a->ip[2] = bpf_htonl(0x0000ffff);
	a->ip[3] = ip4;
}

static __always_inline int is_v4mapped(const struct addr *a)
{
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int is_loopback(const struct addr *a)
{
	if (is_v4mapped(a))
		return (bpf_ntohl(a->ip[3]) >> 24) == 127;
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == 0 && a->ip[3] == bpf_htonl(1);
}

static __always_inline int is_localhost(const struct addr *a)
{
	if (is_v4mapped(a))
		return a->ip[3] == bpf_htonl(0x7f000001);
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == 0 && a->ip[3] == bpf_htonl(1);
}

static __always_inline int is_passthrough(const struct addr *a)
{
	if (is_v4mapped(a))
		return a->ip[3] == bpf_htonl(0x7f000006);
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == 0 && a->ip[3] == bpf_htonl(6);
}

/* The pod's trie from one of the pod_* maps of maps. */
static __always_inline int in_pod_trie(void *outer, struct pod *p, const struct addr *a)
{
	void *trie = bpf_map_lookup_elem(outer, &p->id);
	if (!trie)
		return 0;
	struct lpm_key k = {.prefixlen = 128};
	k.ip[0] = a->ip[0];
	k.ip[1] = a->ip[1];
	k.ip[2] = a->ip[2];
	k.ip[3] = a->ip[3];
	return bpf_map_lookup_elem(trie, &k) != NULL;
}

static __always_inline int pod_has_addr(void *m, struct pod *p, const struct addr *a)
{
	struct pod_addr k = {.pod = p->id, .a = *a};
	return bpf_map_lookup_elem(m, &k) != NULL;
}

static __always_inline int port_has(struct pod *p, __u16 port, __u8 flag)
{
	void *ports = bpf_map_lookup_elem(&pod_port_flags, &p->id);
	if (!ports)
		return 0;
	__u32 k = port;
	__u8 *f = bpf_map_lookup_elem(ports, &k);
	return f && (*f & flag);
}

static __always_inline int uid_excluded(struct pod *p, __u32 uid, __u16 port, __u32 proto)
{
	__u32 n = p->cfg->uid_rules;
	struct pod_rule k = {.pod = p->id};
	for (__u32 i = 0; i < MAX_UID_RULES; i++) {
		if (i >= n)
			break;
		k.index = i;
		struct uid_rule *r = bpf_map_lookup_elem(&pod_uid_rules, &k);
		if (!r)
			break;
		if ((r->proto & proto) && uid >= r->uid_first && uid <= r->uid_last &&
		    port >= r->port_first && port <= r->port_last)
			return 1;
	}
	return 0;
}

static __always_inline enum verdict lockdown(struct pod *p, const struct addr *dst, int local)
{
	if (!(p->cfg->flags & CFG_EGRESS) || local || is_loopback(dst))
		return PASS;
	if (in_pod_trie(&pod_egress_allowed, p, dst))
		return PASS;
	return REJECT;
}

static __always_inline enum verdict decide(struct pod *p, struct bpf_sock *sk, const struct addr *dst, __u16 port,
					   int tcp, const struct addr *src)
{
	struct config *cfg = p->cfg;
	__u32 proto = tcp ? RULE_TCP : RULE_UDP;
	int dns = port == 53;

	if (cfg->bypass_mark && sk->mark == cfg->bypass_mark)
		return PASS;
	if (is_passthrough(src))
		return PASS;

	int loop = is_loopback(dst);
	int local = loop || pod_has_addr(&pod_local_addrs, p, dst);

	__u64 ugid = bpf_get_current_uid_gid();
	__u32 uid = (__u32)ugid, gid = (__u32)(ugid >> 32);

	if (tcp && (cfg->flags & CFG_INBOUND) && local && uid == cfg->proxy_uid && !is_localhost(dst))
		return REDIRECT_IN;
	if (uid == cfg->proxy_uid)
		return lockdown(p, dst, local);
	if ((cfg->flags & CFG_PROXY_GID) && gid == cfg->proxy_gid)
		return lockdown(p, dst, local);
	if (uid_excluded(p, uid, port, proto))
		return PASS;
	if (dns) {
		if (cfg->flags & CFG_DNS_ALL)
			return REDIRECT_DNS;
		if ((cfg->flags & CFG_DNS_RESOLVERS) && pod_has_addr(&pod_dns_servers, p, dst))
			return REDIRECT_DNS;
	}
	if (!tcp)
		return lockdown(p, dst, local);
	if (local)
		return PASS;
	if (in_pod_trie(&pod_exclude_out_cidrs, p, dst))
		return lockdown(p, dst, local);
	if (port_has(p, port, PORT_EXCLUDE_OUT))
		return lockdown(p, dst, local);
	return REDIRECT_OUT;
}

static __always_inline void remember(__u64 cookie, const struct addr *dst, __u16 port_be, __u16 family)
{
	struct orig_dst o = {
		.ip = {dst->ip[0], dst->ip[1], dst->ip[2], dst->ip[3]},
		.port = port_be,
		.family = family,
	};
	bpf_map_update_elem(&cookie_orig, &cookie, &o, BPF_ANY);
}

static __always_inline __u16 target_port(const struct config *cfg, enum verdict v)
{
	switch (v) {
	case REDIRECT_OUT:
		return cfg->outbound_port;
	case REDIRECT_IN:
		return cfg->inbound_port;
	default:
		return cfg->dns_port;
	}
}

static __always_inline void count_verdict(struct pod *p, enum verdict v)
{
	switch (v) {
	case REDIRECT_OUT:
		count(p, STAT_REDIRECT_OUT);
		break;
	case REDIRECT_IN:
		count(p, STAT_REDIRECT_IN);
		break;
	case REDIRECT_DNS:
		count(p, STAT_REDIRECT_DNS);
		break;
	case REJECT:
		count(p, STAT_REJECT);
		break;
	default:
		break;
	}
}

static __always_inline struct dns_state *dns_state(struct bpf_sock *sk, int create)
{
	return bpf_sk_storage_get(&dns_sk, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
}

static __always_inline int connect_common(struct bpf_sock_addr *ctx, int v6)
{
	struct pod p;
	struct bpf_sock *sk = ctx->sk;
	struct addr dst, src;

	if (!sk || !task_pod(&p))
		return 1;
	struct config *cfg = p.cfg;
	int tcp = ctx->protocol == IPPROTO_TCP;
	if (!tcp && ctx->protocol != IPPROTO_UDP)
		return 1;

	if (v6) {
		dst.ip[0] = ctx->user_ip6[0];
		dst.ip[1] = ctx->user_ip6[1];
		dst.ip[2] = ctx->user_ip6[2];
		dst.ip[3] = ctx->user_ip6[3];
		src.ip[0] = sk->src_ip6[0];
		src.ip[1] = sk->src_ip6[1];
		src.ip[2] = sk->src_ip6[2];
		src.ip[3] = sk->src_ip6[3];
		if (!is_v4mapped(&dst) && !(cfg->flags & CFG_IPV6))
			return 1;
	} else {
		addr_from4(&dst, ctx->user_ip4);
		addr_from4(&src, sk->src_ip4);
	}
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	enum verdict v = decide(&p, sk, &dst, port, tcp, &src);
	count_verdict(&p, v);
	if (v == PASS)
		return 1;
	if (v == REJECT)
		return 0;

	__u16 family = v6 && !is_v4mapped(&dst) ? AF_INET6 : AF_INET;
	remember(bpf_get_socket_cookie(ctx), &dst, (__u16)ctx->user_port, family);
	if (!tcp) {
		struct dns_state *st = dns_state(sk, 1);
		if (st) {
			__builtin_memcpy(st->connected.ip, dst.ip, sizeof(dst.ip));
			st->connected.port = (__u16)ctx->user_port;
			st->connected.family = family;
			st->last = st->connected;
		}
	}

	if (v6) {
		if (is_v4mapped(&dst)) {
			ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		} else {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = 0;
			ctx->user_ip6[3] = bpf_htonl(1);
		}
	} else {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
	}
	ctx->user_port = bpf_htons(target_port(cfg, v));
	return 1;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return connect_common(ctx, 0);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return connect_common(ctx, 1);
}

static __always_inline int sendmsg_common(struct bpf_sock_addr *ctx, int v6)
{
	struct pod p;
	struct bpf_sock *sk = ctx->sk;
	struct addr dst, src;

	if (!sk || ctx->protocol != IPPROTO_UDP || !task_pod(&p))
		return 1;
	struct config *cfg = p.cfg;
	if (v6) {
		dst.ip[0] = ctx->user_ip6[0];
		dst.ip[1] = ctx->user_ip6[1];
		dst.ip[2] = ctx->user_ip6[2];
		dst.ip[3] = ctx->user_ip6[3];
		src.ip[0] = sk->src_ip6[0];
		src.ip[1] = sk->src_ip6[1];
		src.ip[2] = sk->src_ip6[2];
		src.ip[3] = sk->src_ip6[3];
		if (!is_v4mapped(&dst) && !(cfg->flags & CFG_IPV6))
			return 1;
	} else {
		addr_from4(&dst, ctx->user_ip4);
		addr_from4(&src, sk->src_ip4);
	}
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	enum verdict v = decide(&p, sk, &dst, port, 0, &src);
	if (v == PASS)
		return 1;
	count_verdict(&p, v);
	if (v != REDIRECT_DNS)
		return 0;

	struct dns_state *st = dns_state(sk, 1);
	if (!st)
		return 1;
	__builtin_memcpy(st->last.ip, dst.ip, sizeof(dst.ip));
	st->last.port = (__u16)ctx->user_port;
	st->last.family = v6 && !is_v4mapped(&dst) ? AF_INET6 : AF_INET;

	if (v6) {
		if (is_v4mapped(&dst)) {
			ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		} else {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = 0;
			ctx->user_ip6[3] = bpf_htonl(1);
		}
	} else {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
	}
	ctx->user_port = bpf_htons(cfg->dns_port);
	return 1;
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return sendmsg_common(ctx, 0);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return sendmsg_common(ctx, 1);
}

static __always_inline int recvmsg_common(struct bpf_sock_addr *ctx, int v6)
{
	struct pod p;
	struct bpf_sock *sk = ctx->sk;
	struct addr from;

	if (!sk || !task_pod(&p))
		return 1;
	if (bpf_ntohs((__u16)ctx->user_port) != p.cfg->dns_port)
		return 1;
	if (v6) {
		from.ip[0] = ctx->user_ip6[0];
		from.ip[1] = ctx->user_ip6[1];
		from.ip[2] = ctx->user_ip6[2];
		from.ip[3] = ctx->user_ip6[3];
	} else {
		addr_from4(&from, ctx->user_ip4);
	}
	if (!is_localhost(&from))
		return 1;

	struct dns_state *st = dns_state(sk, 0);
	if (!st)
		return 1;
	struct orig_dst o = {};
	if (st->head != st->tail) {
		__u32 slot = st->head & (DNS_RING - 1);
		o = st->replies[slot];
		st->head++;
	}
	if (!o.port)
		o = st->connected;
	if (!o.port)
		return 1;
	count(&p, STAT_DNS_REPLY);
	if (v6) {
		ctx->user_ip6[0] = o.ip[0];
		ctx->user_ip6[1] = o.ip[1];
		ctx->user_ip6[2] = o.ip[2];
		ctx->user_ip6[3] = o.ip[3];
	} else {
		ctx->user_ip4 = o.ip[3];
	}
	ctx->user_port = o.port;
	return 1;
}

SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	return recvmsg_common(ctx, 0);
}

SEC("cgroup/recvmsg6")
int recvmsg6(struct bpf_sock_addr *ctx)
{
	return recvmsg_common(ctx, 1);
}

static __always_inline int dns_packet(struct __sk_buff *skb, int egress, __u16 dns_port, __u32 *id)
{
	__u32 off;

	if (skb->protocol == bpf_htons(0x0800)) {
		struct {
			__u8 vihl;
			__u8 tos;
			__u16 len;
			__u16 ident;
			__u16 frag;
			__u8 ttl;
			__u8 proto;
			__u16 csum;
			__u32 saddr;
			__u32 daddr;
		} ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return 0;
		if (ip.proto != IPPROTO_UDP)
			return 0;
		if ((bpf_ntohl(egress ? ip.daddr : ip.saddr) >> 24) != 127)
			return 0;
		off = (ip.vihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(0x86dd)) {
		struct {
			__u32 vtcfl;
			__u16 plen;
			__u8 next;
			__u8 hops;
			__u32 saddr[4];
			__u32 daddr[4];
		} ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return 0;
		if (ip6.next != IPPROTO_UDP)
			return 0;
		__u32 *a = egress ? ip6.daddr : ip6.saddr;
		if (a[0] || a[1] || a[2] || a[3] != bpf_htonl(1))
			return 0;
		off = sizeof(ip6);
	} else {
		return 0;
	}
	struct {
		__u16 sport;
		__u16 dport;
		__u16 len;
		__u16 csum;
		__u16 id;
	} udp;
	if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)))
		return 0;
	if (bpf_ntohs(egress ? udp.dport : udp.sport) != dns_port)
		return 0;
	*id = udp.id;
	return 1;
}

static __always_inline int maybe_udp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 proto = skb->protocol;

	if (proto == bpf_htons(0x0800)) {
		__u8 *ip = data;
		if ((void *)(ip + 20) > end)
			return 1;
		return ip[9] == IPPROTO_UDP;
	}
	if (proto == bpf_htons(0x86dd)) {
		__u8 *ip6 = data;
		if ((void *)(ip6 + 40) > end)
			return 1;
		return ip6[6] == IPPROTO_UDP;
	}
	return 0;
}

static __always_inline struct bpf_sock *udp_sock(struct __sk_buff *skb, struct pod *p)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return NULL;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_UDP)
		return NULL;
	if (!skb_pod(skb, p) || !(p->cfg->flags & (CFG_DNS_ALL | CFG_DNS_RESOLVERS)))
		return NULL;
	return sk;
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	if (!maybe_udp(skb))
		return 1;
	struct pod p;
	struct bpf_sock *sk = udp_sock(skb, &p);
	struct dns_key k = {};

	if (!sk || !dns_packet(skb, 1, p.cfg->dns_port, &k.id))
		return 1;
	struct dns_state *st = bpf_sk_storage_get(&dns_sk, sk, 0, 0);
	if (!st || !st->last.port)
		return 1;
	k.cookie = bpf_get_socket_cookie(skb);
	bpf_map_update_elem(&dns_queries, &k, &st->last, BPF_ANY);
	return 1;
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	if (!maybe_udp(skb))
		return 1;
	struct pod p;
	struct bpf_sock *sk = udp_sock(skb, &p);
	struct dns_key k = {};

	if (!sk || !dns_packet(skb, 0, p.cfg->dns_port, &k.id))
		return 1;
	struct dns_state *st = bpf_sk_storage_get(&dns_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1;
	k.cookie = bpf_get_socket_cookie(skb);
	__u32 slot = st->tail & (DNS_RING - 1);
	struct orig_dst *o = bpf_map_lookup_elem(&dns_queries, &k);
	if (o) {
		st->replies[slot] = *o;
		bpf_map_delete_elem(&dns_queries, &k);
	} else {
		__builtin_memset(&st->replies[slot], 0, sizeof(st->replies[slot]));
	}
	st->tail++;
	if (st->tail - st->head > DNS_RING)
		st->head = st->tail - DNS_RING;
	return 1;
}

static __always_inline void local_key(struct bpf_sock_ops *skops, struct pod_peer *k)
{
	__u32 family = READ(skops->family);
	__u32 ip4 = READ(skops->local_ip4);
	__u32 ip6_0 = READ(skops->local_ip6[0]), ip6_1 = READ(skops->local_ip6[1]);
	__u32 ip6_2 = READ(skops->local_ip6[2]), ip6_3 = READ(skops->local_ip6[3]);

	if (family == AF_INET) {
		k->ip[0] = 0;
		k->ip[1] = 0;
		k->ip[2] = bpf_htonl(0x0000ffff);
		k->ip[3] = ip4;
	} else {
		k->ip[0] = ip6_0;
		k->ip[1] = ip6_1;
		k->ip[2] = ip6_2;
		k->ip[3] = ip6_3;
	}
	k->port = skops->local_port;
	k->netns = bpf_get_netns_cookie(skops);
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	struct pod_peer k = {};
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		cookie = bpf_get_socket_cookie(skops);
		struct orig_dst *o = bpf_map_lookup_elem(&cookie_orig, &cookie);
		if (!o)
			break;
		local_key(skops, &k);
		bpf_map_update_elem(&peer_orig, &k, o, BPF_ANY);
		bpf_map_delete_elem(&cookie_orig, &cookie);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		local_key(skops, &k);
		bpf_map_delete_elem(&peer_orig, &k);
		break;
	}
	return 1;
}

SEC("cgroup/getsockopt")
int get_sockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct pod_peer k = {};
	struct pod p = {};
	int v6;

	if (ctx->level == SOL_IP && ctx->optname == SO_ORIGINAL_DST)
		v6 = 0;
	else if (ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST)
		v6 = 1;
	else
		return 1;
	if (!sk)
		return 1;
	task_pod(&p);

	__u32 family = READ(sk->family);
	__u32 ip4 = READ(sk->dst_ip4);
	__u32 ip6_0 = READ(sk->dst_ip6[0]), ip6_1 = READ(sk->dst_ip6[1]);
	__u32 ip6_2 = READ(sk->dst_ip6[2]), ip6_3 = READ(sk->dst_ip6[3]);
	__u16 port = READ(sk->dst_port);

	if (family == AF_INET) {
		k.ip[2] = bpf_htonl(0x0000ffff);
		k.ip[3] = ip4;
	} else {
		k.ip[0] = ip6_0;
		k.ip[1] = ip6_1;
		k.ip[2] = ip6_2;
		k.ip[3] = ip6_3;
	}
	k.port = bpf_ntohs(port);
	k.netns = bpf_get_netns_cookie(ctx);

	struct orig_dst *o = bpf_map_lookup_elem(&peer_orig, &k);
	if (!o) {
		count(&p, STAT_ORIG_MISS);
		return 1;
	}

	void *end = ctx->optval_end;
	if (!v6) {
		struct sockaddr4 {
			__u16 family;
			__u16 port;
			__u32 addr;
			__u8 zero[8];
		} *sa = ctx->optval;
		if ((void *)(sa + 1) > end)
			return 1;
		if (o->family != AF_INET)
			return 1;
		sa->family = AF_INET;
		sa->port = o->port;
		sa->addr = o->ip[3];
		__builtin_memset(sa->zero, 0, sizeof(sa->zero));
		ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr6 {
			__u16 family;
			__u16 port;
			__u32 flowinfo;
			__u32 addr[4];
			__u32 scope_id;
		} *sa = ctx->optval;
		if ((void *)(sa + 1) > end)
			return 1;
		sa->family = AF_INET6;
		sa->port = o->port;
		sa->flowinfo = 0;
		sa->addr[0] = o->ip[0];
		sa->addr[1] = o->ip[1];
		sa->addr[2] = o->ip[2];
		sa->addr[3] = o->ip[3];
		sa->scope_id = 0;
		ctx->optlen = sizeof(*sa);
	}
	ctx->retval = 0;
	count(&p, STAT_ORIG_HIT);
	return 1;
}

SEC("sk_lookup")
int inbound_lookup(struct bpf_sk_lookup *ctx)
{
	struct addr local, remote;
	struct pod p;
	struct pod_listener lk = {};

	/* Every field read up front: the verifier refuses a context pointer
	 * the compiler would offset in a branch. */
	__u32 protocol = READ(ctx->protocol), family = READ(ctx->family);
	__u32 l4 = READ(ctx->local_ip4), r4 = READ(ctx->remote_ip4);
	__u32 l6_0 = READ(ctx->local_ip6[0]), l6_1 = READ(ctx->local_ip6[1]);
	__u32 l6_2 = READ(ctx->local_ip6[2]), l6_3 = READ(ctx->local_ip6[3]);
	__u32 r6_0 = READ(ctx->remote_ip6[0]), r6_1 = READ(ctx->remote_ip6[1]);
	__u32 r6_2 = READ(ctx->remote_ip6[2]), r6_3 = READ(ctx->remote_ip6[3]);
	__u32 local_port = READ(ctx->local_port);

	if (protocol != IPPROTO_TCP)
		return SK_PASS;
	if (family == AF_INET) {
		addr_from4(&local, l4);
		addr_from4(&remote, r4);
		lk.family = 0;
	} else {
		local.ip[0] = l6_0;
		local.ip[1] = l6_1;
		local.ip[2] = l6_2;
		local.ip[3] = l6_3;
		remote.ip[0] = r6_0;
		remote.ip[1] = r6_1;
		remote.ip[2] = r6_2;
		remote.ip[3] = r6_3;
		lk.family = 1;
	}
	if (is_loopback(&local) || is_loopback(&remote))
		return SK_PASS;
	__u64 *owner = bpf_map_lookup_elem(&addr_pods, &local);
	if (!owner || !pod_of(&p, *owner))
		return SK_PASS;
	struct config *cfg = p.cfg;
	if (!(cfg->flags & CFG_INBOUND))
		return SK_PASS;
	if (lk.family == 1 && !(cfg->flags & CFG_IPV6))
		return SK_PASS;
	if (pod_has_addr(&pod_local_addrs, &p, &remote))
		return SK_PASS;
	if (in_pod_trie(&pod_exclude_in_cidrs, &p, &remote))
		return SK_PASS;
	if (port_has(&p, (__u16)local_port, PORT_EXCLUDE_IN))
		return SK_PASS;

	lk.pod = p.id;
	struct bpf_sock *sk = bpf_map_lookup_elem(&inbound_listener, &lk);
	if (!sk && lk.family == 0) {
		lk.family = 1;
		sk = bpf_map_lookup_elem(&inbound_listener, &lk);
	}
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (!err)
		count(&p, STAT_INBOUND_STEER);
	return SK_PASS;
}

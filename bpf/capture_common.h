/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The programs of capture.c (one copy per cgroup) and capture_node.c (one
 * copy per node). Their decisions are the same, rule for rule, and follow
 * redirect.Plan.Explain; what differs is how a program finds its pod's
 * configuration. So the programs are written once, here, against a pod the
 * including file defines, and each object includes this after its own
 * maps.
 *
 * The including file defines, before including this: struct pod, one pod
 * as a program sees it, with its struct config *cfg; PEER_KEY, the struct
 * type of peer_orig's key, with ip[4] and port; and the sizes ORIG_ENTRIES (of
 * cookie_orig and peer_orig) and DNS_QUERIES_ENTRIES. It defines the
 * functions declared below, which find a pod and read its entries, after.
 */
#ifndef SHUNT_CAPTURE_COMMON_H
#define SHUNT_CAPTURE_COMMON_H

#include "capture.h"
#include "packet.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* A volatile load stays where it is written; the verifier refuses context
 * loads the compiler sinks into a branch behind an offset pointer. */
#define READ(x) (*(volatile typeof(x) *)&(x))

enum verdict {
	PASS,
	REJECT,
	REDIRECT_OUT,
	REDIRECT_IN,
	REDIRECT_DNS,
};

/* The pod's CIDR tries. */
enum trie {
	TRIE_EXCLUDE_OUT,
	TRIE_EXCLUDE_IN,
	/* Egress.Allowed and MeshCIDRs, when egress is locked down. */
	TRIE_EGRESS_ALLOWED,
	/* IncludeOutboundCIDRs, read with CFG_INCLUDE_OUT_CIDRS. */
	TRIE_INCLUDE_OUT,
};

/* Original destination by the application socket's cookie, written at
 * connect and read by sockops once the connection is up. Socket cookies
 * are unique on the host, so the node's pods share it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, ORIG_ENTRIES);
	__type(key, __u64);
	__type(value, struct orig_dst);
} cookie_orig SEC(".maps");

/* Original destination by the peer address the proxy sees; entries go when
 * the application's socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, ORIG_ENTRIES);
	__type(key, PEER_KEY);
	__type(value, struct orig_dst);
} peer_orig SEC(".maps");

/* Lives and dies with the socket, so no entry outlives a DNS client. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dns_state);
} dns_sk SEC(".maps");

/* The resolver of each redirected query in flight, by socket and DNS id. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DNS_QUERIES_ENTRIES);
	__type(key, struct dns_key);
	__type(value, struct orig_dst);
} dns_queries SEC(".maps");

/* The pod of the calling task (socket hooks), of a packet's socket, and of
 * a new inbound connection to local; 0: none enrolled. */
static __always_inline int task_pod(struct pod *p);
static __always_inline int skb_pod(struct __sk_buff *skb, struct pod *p);
static __always_inline int inbound_pod(struct pod *p, const struct addr *local);
/* Bumps one of the pod's counters (enum stat). */
static __always_inline void count(struct pod *p, __u32 which);
/* Whether a is one of the pod's own addresses, or one of its resolvers. */
static __always_inline int pod_local_addr(struct pod *p, const struct addr *a);
static __always_inline int pod_dns_server(struct pod *p, const struct addr *a);
/* Whether e is one of the pod's egress endpoints. */
static __always_inline int pod_endpoint(struct pod *p, const struct endpoint *e);
/* The pod's LPM trie, or NULL. */
static __always_inline void *pod_trie(struct pod *p, enum trie which);
/* Whether the pod's port table has flag (PORT_EXCLUDE_*) for port. */
static __always_inline int pod_port_has(struct pod *p, __u16 port, __u8 flag);
/* The pod's i-th uid rule, or NULL. */
static __always_inline struct uid_rule *pod_uid_rule(struct pod *p, __u32 i);
/* The pod's inbound listener for IPv4 (or IPv6), a reference to release;
 * NULL if none is registered. */
static __always_inline struct bpf_sock *pod_listener(struct pod *p, int v6);
/* Completes a peer_orig key from the sockops or getsockopt context. */
static __always_inline void peer_set_netns(PEER_KEY *k, void *ctx);

static __always_inline void addr_from4(struct addr *a, __u32 ip4)
{
	a->ip[0] = 0;
	a->ip[1] = 0;
	a->ip[2] = bpf_htonl(0x0000ffff);
	a->ip[3] = ip4;
}

static __always_inline void addr_from6(struct addr *a, __u32 ip0, __u32 ip1, __u32 ip2, __u32 ip3)
{
	a->ip[0] = ip0;
	a->ip[1] = ip1;
	a->ip[2] = ip2;
	a->ip[3] = ip3;
}

/* An address from a socket's fields, all of them read already (READ):
 * the IPv4 one for AF_INET, the IPv6 ones otherwise. */
static __always_inline void addr_pick(__u32 ip[4], __u32 family, __u32 ip4, __u32 ip0, __u32 ip1, __u32 ip2,
				      __u32 ip3)
{
	if (family == AF_INET) {
		ip[0] = 0;
		ip[1] = 0;
		ip[2] = bpf_htonl(0x0000ffff);
		ip[3] = ip4;
	} else {
		ip[0] = ip0;
		ip[1] = ip1;
		ip[2] = ip2;
		ip[3] = ip3;
	}
}

static __always_inline int is_v4mapped(const struct addr *a)
{
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == bpf_htonl(0x0000ffff);
}

/* ::n */
static __always_inline int is_ip6(const struct addr *a, __u32 n)
{
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == 0 && a->ip[3] == bpf_htonl(n);
}

static __always_inline int is_loopback(const struct addr *a)
{
	if (is_v4mapped(a))
		return (bpf_ntohl(a->ip[3]) >> 24) == 127;
	return is_ip6(a, 1);
}

/* 127.0.0.1 or ::1: where the proxy's and shunt's listeners are. */
static __always_inline int is_localhost(const struct addr *a)
{
	if (is_v4mapped(a))
		return a->ip[3] == bpf_htonl(0x7f000001);
	return is_ip6(a, 1);
}

/* 127.0.0.6 or ::6: the proxy's inbound passthrough source. */
static __always_inline int is_passthrough(const struct addr *a)
{
	if (is_v4mapped(a))
		return a->ip[3] == bpf_htonl(0x7f000006);
	return is_ip6(a, 6);
}

static __always_inline int in_trie(struct pod *p, enum trie which, const struct addr *a)
{
	void *trie = pod_trie(p, which);
	if (!trie)
		return 0;
	struct lpm_key k = {.prefixlen = 128};
	k.ip[0] = a->ip[0];
	k.ip[1] = a->ip[1];
	k.ip[2] = a->ip[2];
	k.ip[3] = a->ip[3];
	return bpf_map_lookup_elem(trie, &k) != NULL;
}

static __always_inline int uid_excluded(struct pod *p, __u32 uid, __u16 port, __u32 proto)
{
	__u32 n = p->cfg->uid_rules;
	for (__u32 i = 0; i < MAX_UID_RULES; i++) {
		if (i >= n)
			break;
		struct uid_rule *r = pod_uid_rule(p, i);
		if (!r)
			break;
		if ((r->proto & proto) && uid >= r->uid_first && uid <= r->uid_last &&
		    port >= r->port_first && port <= r->port_last)
			return 1;
	}
	return 0;
}

static __always_inline int is_endpoint(struct pod *p, const struct addr *a, __u16 port)
{
	struct endpoint e = {
		.ip = {a->ip[0], a->ip[1], a->ip[2], a->ip[3]},
		.port = port,
		.family = is_v4mapped(a) ? AF_INET : AF_INET6,
	};
	return pod_endpoint(p, &e);
}

/* Egress lockdown of a connection capture lets through. The workload's own
 * addresses are loopback traffic, never egress. An endpoint of the proxy
 * opens its own TCP port only, so it is looked up with the port before the
 * ranges of the trie, which open every port. */
static __always_inline enum verdict lockdown(struct pod *p, const struct addr *dst, __u16 port, int tcp, int local)
{
	if (!(p->cfg->flags & CFG_EGRESS) || local || is_loopback(dst))
		return PASS;
	if (tcp && is_endpoint(p, dst, port))
		return PASS;
	/* The upstream nameservers stay reachable on port 53, as in
	 * Plan.Explain: the proxy resolves its DNS clusters' hosts there. */
	if (port == 53 && pod_dns_server(p, dst))
		return PASS;
	if (in_trie(p, TRIE_EGRESS_ALLOWED, dst))
		return PASS;
	return REJECT;
}

/* decide is Plan.Explain for an outbound flow, in the same order. */
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
	int local = loop || pod_local_addr(p, dst);

	__u64 ugid = bpf_get_current_uid_gid();
	__u32 uid = (__u32)ugid, gid = (__u32)(ugid >> 32);

	if (tcp && (cfg->flags & CFG_INBOUND) && local && uid == cfg->proxy_uid && !is_localhost(dst))
		return REDIRECT_IN;
	if (uid == cfg->proxy_uid)
		return lockdown(p, dst, port, tcp, local);
	if ((cfg->flags & CFG_PROXY_GID) && gid == cfg->proxy_gid)
		return lockdown(p, dst, port, tcp, local);
	if (uid_excluded(p, uid, port, proto))
		return PASS;
	if (dns) {
		if (cfg->flags & CFG_DNS_ALL)
			return REDIRECT_DNS;
		if ((cfg->flags & CFG_DNS_RESOLVERS) && pod_dns_server(p, dst))
			return REDIRECT_DNS;
	}
	if (!tcp)
		return lockdown(p, dst, port, tcp, local);
	if (local)
		return PASS;
	if (in_trie(p, TRIE_EXCLUDE_OUT, dst))
		return lockdown(p, dst, port, tcp, local);
	if (pod_port_has(p, port, PORT_EXCLUDE_OUT))
		return lockdown(p, dst, port, tcp, local);
	if ((cfg->flags & CFG_INCLUDE_OUT_CIDRS) && !in_trie(p, TRIE_INCLUDE_OUT, dst))
		return lockdown(p, dst, port, tcp, local);
	if ((cfg->flags & CFG_INCLUDE_OUT_PORTS) && !pod_port_has(p, port, PORT_INCLUDE_OUT))
		return lockdown(p, dst, port, tcp, local);
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

/* The address a sendmsg or connect is for (or a recvmsg's source). */
static __always_inline void user_addr(struct bpf_sock_addr *ctx, int v6, struct addr *a)
{
	if (v6)
		addr_from6(a, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	else
		addr_from4(a, ctx->user_ip4);
}

/* The destination and the socket's source, for decide. Returns 0 for an
 * IPv6 destination when the plan captures IPv4 only. */
static __always_inline int sock_addrs(struct bpf_sock_addr *ctx, struct bpf_sock *sk, const struct config *cfg,
				      int v6, struct addr *dst, struct addr *src)
{
	user_addr(ctx, v6, dst);
	if (!v6) {
		addr_from4(src, sk->src_ip4);
		return 1;
	}
	addr_from6(src, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
	return is_v4mapped(dst) || (cfg->flags & CFG_IPV6);
}

static __always_inline __u16 dst_family(int v6, const struct addr *dst)
{
	return v6 && !is_v4mapped(dst) ? AF_INET6 : AF_INET;
}

/* Sends the connection or datagram to 127.0.0.1 (or ::1) instead, port
 * port. */
static __always_inline void to_localhost(struct bpf_sock_addr *ctx, int v6, const struct addr *dst, __u16 port)
{
	if (v6) {
		if (is_v4mapped(dst)) {
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
	ctx->user_port = bpf_htons(port);
}

static __always_inline int connect_common(struct bpf_sock_addr *ctx, int v6)
{
	struct pod p;
	struct bpf_sock *sk = ctx->sk;
	struct addr dst, src;

	if (!sk || !task_pod(&p))
		return 1;
	int tcp = ctx->protocol == IPPROTO_TCP;
	if (!tcp && ctx->protocol != IPPROTO_UDP)
		return 1;
	if (!sock_addrs(ctx, sk, p.cfg, v6, &dst, &src))
		return 1;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	enum verdict v = decide(&p, sk, &dst, port, tcp, &src);
	count_verdict(&p, v);
	if (v == PASS)
		return 1;
	if (v == REJECT)
		return 0;

	__u16 family = dst_family(v6, &dst);
	remember(bpf_get_socket_cookie(ctx), &dst, (__u16)ctx->user_port, family);
	if (!tcp) {
		/* A connected DNS socket talks to one resolver: recvmsg gives
		 * every reply that resolver's address. */
		struct dns_state *st = dns_state(sk, 1);
		if (st) {
			__builtin_memcpy(st->connected.ip, dst.ip, sizeof(dst.ip));
			st->connected.port = (__u16)ctx->user_port;
			st->connected.family = family;
			st->last = st->connected;
		}
	}
	to_localhost(ctx, v6, &dst, target_port(p.cfg, v));
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

/* The ports capture sends traffic to (the proxy's outbound and inbound
 * listeners, the DNS interceptor) and the agent's admin endpoint may be
 * bound only by the proxy's UID or GID, or by root (shunt). A process of
 * the workload that bound one while the proxy or the agent was down would
 * receive what capture sends there, or answer probes of the admin
 * endpoint, in their place; its bind fails with EPERM instead. */
static __always_inline int bind_common(struct bpf_sock_addr *ctx)
{
	struct pod p;

	if (!task_pod(&p))
		return 1;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	struct config *cfg = p.cfg;
	int guarded = port != 0 && (port == cfg->outbound_port ||
				    ((cfg->flags & CFG_INBOUND) && port == cfg->inbound_port) ||
				    ((cfg->flags & (CFG_DNS_RESOLVERS | CFG_DNS_ALL)) && port == cfg->dns_port) ||
				    port == cfg->admin_port);
	if (!guarded)
		return 1;
	__u64 ug = bpf_get_current_uid_gid();
	__u32 uid = (__u32)ug, gid = (__u32)(ug >> 32);
	if (uid == 0 || uid == cfg->proxy_uid)
		return 1;
	if ((cfg->flags & CFG_PROXY_GID) && gid == cfg->proxy_gid)
		return 1;
	return 0;
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	return bind_common(ctx);
}

SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx)
{
	return bind_common(ctx);
}

static __always_inline int sendmsg_common(struct bpf_sock_addr *ctx, int v6)
{
	struct pod p;
	struct bpf_sock *sk = ctx->sk;
	struct addr dst, src;

	if (!sk || ctx->protocol != IPPROTO_UDP || !task_pod(&p))
		return 1;
	if (!sock_addrs(ctx, sk, p.cfg, v6, &dst, &src))
		return 1;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	enum verdict v = decide(&p, sk, &dst, port, 0, &src);
	if (v == PASS)
		return 1;
	count_verdict(&p, v);
	if (v != REDIRECT_DNS)
		return 0;

	struct dns_state *st = dns_state(sk, 1);
	if (!st)
		return 1; /* cannot restore the reply's source: leave it alone */
	__builtin_memcpy(st->last.ip, dst.ip, sizeof(dst.ip));
	st->last.port = (__u16)ctx->user_port;
	st->last.family = dst_family(v6, &dst);
	to_localhost(ctx, v6, &dst, p.cfg->dns_port);
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
	user_addr(ctx, v6, &from);
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

/* dns_packet reads a UDP datagram to (egress) or from (ingress) the DNS
 * interceptor on loopback, and its DNS id. */
static __always_inline int dns_packet(struct __sk_buff *skb, int egress, __u16 dns_port, __u32 *id)
{
	__u32 off;

	if (skb->protocol == bpf_htons(0x0800)) {
		struct ip4 ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return 0;
		if (ip.proto != IPPROTO_UDP)
			return 0;
		if ((bpf_ntohl(egress ? ip.daddr : ip.saddr) >> 24) != 127)
			return 0;
		off = (ip.vihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(0x86dd)) {
		struct ip6 ip6;
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

/* The packet programs run on every packet of the cgroup's sockets, and
 * nearly all of them are TCP. Reading the protocol from the IP header in
 * place (no helper, no map lookup) lets those leave after a few
 * instructions. A header not in the linear area says "maybe", and the
 * full check below decides. */
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

/* The packet's UDP socket, when its pod redirects DNS. */
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

/* The socket of a DNS query to (egress) or reply from the interceptor, and
 * its DNS id. */
static __always_inline struct bpf_sock *dns_sock(struct __sk_buff *skb, int egress, __u32 *id)
{
	if (!maybe_udp(skb))
		return NULL;
	struct pod p;
	struct bpf_sock *sk = udp_sock(skb, &p);
	if (!sk || !dns_packet(skb, egress, p.cfg->dns_port, id))
		return NULL;
	return sk;
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	struct dns_key k = {};
	struct bpf_sock *sk = dns_sock(skb, 1, &k.id);

	if (!sk)
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
	struct dns_key k = {};
	struct bpf_sock *sk = dns_sock(skb, 0, &k.id);

	if (!sk)
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
	/* A reply dropped after this point (a full receive buffer) would leave
	 * its entry behind; never let the queue grow past the ring. */
	if (st->tail - st->head > DNS_RING)
		st->head = st->tail - DNS_RING;
	return 1;
}

/* The peer address the proxy sees: the application socket's local one. */
static __always_inline void local_key(struct bpf_sock_ops *skops, PEER_KEY *k)
{
	/* Both families' fields are read unconditionally: the verifier
	 * refuses a context pointer the compiler would otherwise offset in a
	 * shared branch. */
	__u32 family = READ(skops->family);
	__u32 ip4 = READ(skops->local_ip4);
	__u32 ip6_0 = READ(skops->local_ip6[0]), ip6_1 = READ(skops->local_ip6[1]);
	__u32 ip6_2 = READ(skops->local_ip6[2]), ip6_3 = READ(skops->local_ip6[3]);

	addr_pick(k->ip, family, ip4, ip6_0, ip6_1, ip6_2, ip6_3);
	k->port = skops->local_port;
	peer_set_netns(k, skops);
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	PEER_KEY k = {};
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
		/* Ask for state changes so the entry goes with the socket. */
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

/* Writes the original destination as getsockopt's sockaddr_in (v6: _in6).
 * Returns 0 when it does not fit or has no such form. */
static __always_inline int put_orig_dst(struct bpf_sockopt *ctx, const struct orig_dst *o, int v6)
{
	void *end = ctx->optval_end;
	if (!v6) {
		struct sockaddr4 {
			__u16 family;
			__u16 port;
			__u32 addr;
			__u8 zero[8];
		} *sa = ctx->optval;
		if ((void *)(sa + 1) > end)
			return 0;
		if (o->family != AF_INET)
			return 0; /* an IPv6 destination has no IPv4 form */
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
			return 0;
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
	return 1;
}

SEC("cgroup/getsockopt")
int get_sockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	PEER_KEY k = {};
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
	task_pod(&p); /* for the counters only */

	__u32 family = READ(sk->family);
	__u32 ip4 = READ(sk->dst_ip4);
	__u32 ip6_0 = READ(sk->dst_ip6[0]), ip6_1 = READ(sk->dst_ip6[1]);
	__u32 ip6_2 = READ(sk->dst_ip6[2]), ip6_3 = READ(sk->dst_ip6[3]);
	__u16 port = READ(sk->dst_port);

	addr_pick(k.ip, family, ip4, ip6_0, ip6_1, ip6_2, ip6_3);
	k.port = bpf_ntohs(port);
	peer_set_netns(&k, ctx);

	struct orig_dst *o = bpf_map_lookup_elem(&peer_orig, &k);
	if (!o) {
		count(&p, STAT_ORIG_MISS);
		return 1;
	}
	if (!put_orig_dst(ctx, o, v6))
		return 1;
	ctx->retval = 0;
	count(&p, STAT_ORIG_HIT);
	return 1;
}

/* Whether a new inbound TCP connection from remote to local:port is
 * captured (and p then holds its pod). */
static __always_inline int inbound_captured(struct pod *p, const struct addr *local, const struct addr *remote,
					    __u16 port, int v6)
{
	if (is_loopback(local) || is_loopback(remote))
		return 0;
	if (!inbound_pod(p, local))
		return 0;
	struct config *cfg = p->cfg;
	if (!(cfg->flags & CFG_INBOUND))
		return 0;
	if (v6 && !(cfg->flags & CFG_IPV6))
		return 0;
	/* Traffic from the workload to itself crosses the loopback interface:
	 * its source is one of the workload's own addresses. */
	if (pod_local_addr(p, remote))
		return 0;
	if (in_trie(p, TRIE_EXCLUDE_IN, remote))
		return 0;
	if (pod_port_has(p, port, PORT_EXCLUDE_IN))
		return 0;
	if ((cfg->flags & CFG_INCLUDE_IN_PORTS) && !pod_port_has(p, port, PORT_INCLUDE_IN))
		return 0;
	return 1;
}

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TC_ACT_UNSPEC (-1)
#define TC_ACT_OK 0
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* tc ingress of the workload's interfaces: the SYN of a captured inbound
 * connection is given to the socket listening on the inbound port, found
 * the way TCP finds a listener (bpf_skc_lookup_tcp). Unlike sk_lookup,
 * which takes the listener from a SOCKMAP, this serves any listener: an
 * MPTCP one (Go's default) is found through its TCP subflow listener, which
 * a SOCKMAP refuses. The accepted connection keeps the original
 * destination as its local address, as with sk_lookup. Where no listener is
 * found the packet goes on, and sk_lookup refuses it.
 *
 * It runs as a cls_bpf filter in direct-action mode (or a TCX program: the
 * codes mean the same there). A packet it does not steer gets TC_ACT_UNSPEC
 * (TCX_NEXT): the next filter, another tool's, decides, as if shunt's were
 * not there. A steered SYN gets TC_ACT_OK (TCX_PASS): it is delivered to
 * the listener, and no later filter may redirect it away from the socket
 * it was assigned. */
SEC("tc")
int inbound_tc(struct __sk_buff *skb)
{
	struct bpf_sock_tuple t = {};
	struct addr local, remote;
	struct pod p;
	__u32 l4off, tsize;
	int v6;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl, proto;
		__u16 frag;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) || bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 6, &frag, 2))
			return TC_ACT_UNSPEC;
		if (proto != IPPROTO_TCP || (frag & bpf_htons(0x1fff)))
			return TC_ACT_UNSPEC;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 12, &t.ipv4.saddr, 4) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 16, &t.ipv4.daddr, 4))
			return TC_ACT_UNSPEC;
		l4off = ETH_HLEN + (vihl & 0x0f) * 4;
		addr_pick(local.ip, AF_INET, t.ipv4.daddr, 0, 0, 0, 0);
		addr_pick(remote.ip, AF_INET, t.ipv4.saddr, 0, 0, 0, 0);
		tsize = sizeof(t.ipv4);
		v6 = 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 next;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &next, 1) || next != IPPROTO_TCP)
			return TC_ACT_UNSPEC;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 8, t.ipv6.saddr, 16) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 24, t.ipv6.daddr, 16))
			return TC_ACT_UNSPEC;
		l4off = ETH_HLEN + 40;
		__builtin_memcpy(local.ip, t.ipv6.daddr, 16);
		__builtin_memcpy(remote.ip, t.ipv6.saddr, 16);
		tsize = sizeof(t.ipv6);
		v6 = 1;
	} else {
		return TC_ACT_UNSPEC;
	}
	__u16 ports[2];
	__u8 flags;
	if (bpf_skb_load_bytes(skb, l4off, ports, 4) || bpf_skb_load_bytes(skb, l4off + 13, &flags, 1))
		return TC_ACT_UNSPEC;
	if (!(flags & TCP_FLAG_SYN) || (flags & TCP_FLAG_ACK))
		return TC_ACT_UNSPEC;
	if (!inbound_captured(&p, &local, &remote, bpf_ntohs(ports[1]), v6))
		return TC_ACT_UNSPEC;
	if (v6) {
		t.ipv6.sport = ports[0];
		t.ipv6.dport = bpf_htons(p.cfg->inbound_port);
	} else {
		t.ipv4.sport = ports[0];
		t.ipv4.dport = bpf_htons(p.cfg->inbound_port);
	}
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, tsize, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_UNSPEC;
	int ret = TC_ACT_UNSPEC;
	if (sk->state == BPF_TCP_LISTEN && !bpf_sk_assign(skb, sk, 0)) {
		count(&p, STAT_INBOUND_STEER);
		ret = TC_ACT_OK;
	}
	bpf_sk_release(sk);
	return ret;
}

SEC("sk_lookup")
int inbound_lookup(struct bpf_sk_lookup *ctx)
{
	struct addr local, remote;
	struct pod p;

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
	int v6 = family != AF_INET;
	addr_pick(local.ip, family, l4, l6_0, l6_1, l6_2, l6_3);
	addr_pick(remote.ip, family, r4, r6_0, r6_1, r6_2, r6_3);
	if (!inbound_captured(&p, &local, &remote, (__u16)local_port, v6))
		return SK_PASS;
	/* A lookup of the inbound port is for the listener itself: inbound_tc
	 * finding it (its bpf_skc_lookup_tcp runs this program too), or a
	 * connection made to that port. The kernel's own lookup finds it. */
	if ((__u16)local_port == p.cfg->inbound_port)
		return SK_PASS;

	struct bpf_sock *sk = pod_listener(&p, v6);
	/* A dual-stack listener serves IPv4 too. */
	if (!sk && !v6)
		sk = pod_listener(&p, 1);
	/* No proxy listening yet: refuse, as a REDIRECT to a closed port does.
	 * Passing would hand the connection to the application behind the
	 * proxy's back. SK_DROP makes the lookup fail, and TCP answers with
	 * a reset. */
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (!err)
		count(&p, STAT_INBOUND_STEER);
	return SK_PASS;
}

#endif

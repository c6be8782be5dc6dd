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
 */
#include "capture.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

/* A volatile load stays where it is written; the verifier refuses context
 * loads the compiler sinks into a branch behind an offset pointer. */
#define READ(x) (*(volatile typeof(x) *)&(x))

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
/* Egress.Allowed and MeshCIDRs, when egress is locked down. */
LPM_MAP(egress_allowed, 65536);

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

/* Original destination by the application socket's cookie, written at
 * connect and read by sockops once the connection is up. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct orig_dst);
} cookie_orig SEC(".maps");

/* Original destination by the peer address the proxy sees; entries go when
 * the application's socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
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
	__uint(max_entries, 16384);
	__type(key, struct dns_key);
	__type(value, struct orig_dst);
} dns_queries SEC(".maps");

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

enum verdict {
	PASS,
	REJECT,
	REDIRECT_OUT,
	REDIRECT_IN,
	REDIRECT_DNS,
};

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &which);
	if (n)
		(*n)++;
}

static __always_inline struct config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config_map, &zero);
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

/* 127.0.0.1 or ::1: where the proxy's and shunt's listeners are. */
static __always_inline int is_localhost(const struct addr *a)
{
	if (is_v4mapped(a))
		return a->ip[3] == bpf_htonl(0x7f000001);
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == 0 && a->ip[3] == bpf_htonl(1);
}

/* 127.0.0.6 or ::6: the proxy's inbound passthrough source. */
static __always_inline int is_passthrough(const struct addr *a)
{
	if (is_v4mapped(a))
		return a->ip[3] == bpf_htonl(0x7f000006);
	return a->ip[0] == 0 && a->ip[1] == 0 && a->ip[2] == 0 && a->ip[3] == bpf_htonl(6);
}

static __always_inline int in_trie(void *trie, const struct addr *a)
{
	struct lpm_key k = {.prefixlen = 128};
	k.ip[0] = a->ip[0];
	k.ip[1] = a->ip[1];
	k.ip[2] = a->ip[2];
	k.ip[3] = a->ip[3];
	return bpf_map_lookup_elem(trie, &k) != NULL;
}

static __always_inline int port_has(__u16 port, __u8 flag)
{
	__u32 k = port;
	__u8 *f = bpf_map_lookup_elem(&port_flags, &k);
	return f && (*f & flag);
}

static __always_inline int uid_excluded(const struct config *cfg, __u32 uid, __u16 port, __u32 proto)
{
	__u32 n = cfg->uid_rules;
	for (__u32 i = 0; i < MAX_UID_RULES; i++) {
		if (i >= n)
			break;
		struct uid_rule *r = bpf_map_lookup_elem(&uid_rules, &i);
		if (!r)
			break;
		if ((r->proto & proto) && uid >= r->uid_first && uid <= r->uid_last &&
		    port >= r->port_first && port <= r->port_last)
			return 1;
	}
	return 0;
}

/* Egress lockdown of a connection capture lets through. The workload's own
 * addresses are loopback traffic, never egress. */
static __always_inline enum verdict lockdown(const struct config *cfg, const struct addr *dst, int local)
{
	if (!(cfg->flags & CFG_EGRESS) || local || is_loopback(dst))
		return PASS;
	if (in_trie(&egress_allowed, dst))
		return PASS;
	return REJECT;
}

/* decide is Plan.Explain for an outbound flow, in the same order. */
static __always_inline enum verdict decide(const struct config *cfg, struct bpf_sock *sk, const struct addr *dst,
					   __u16 port, int tcp, const struct addr *src)
{
	__u32 proto = tcp ? RULE_TCP : RULE_UDP;
	int dns = port == 53;

	if (cfg->bypass_mark && sk->mark == cfg->bypass_mark)
		return PASS;
	if (is_passthrough(src))
		return PASS;

	int loop = is_loopback(dst);
	int local = loop || bpf_map_lookup_elem(&local_addrs, dst) != NULL;

	__u64 ugid = bpf_get_current_uid_gid();
	__u32 uid = (__u32)ugid, gid = (__u32)(ugid >> 32);

	if (tcp && (cfg->flags & CFG_INBOUND) && local && uid == cfg->proxy_uid && !is_localhost(dst))
		return REDIRECT_IN;
	/* Plan.Explain passes the proxy here; egress lockdown still applies to
	 * what the proxy sends, so a locked-down proxy cannot be used to
	 * escape. */
	if (uid == cfg->proxy_uid)
		return lockdown(cfg, dst, local);
	if ((cfg->flags & CFG_PROXY_GID) && gid == cfg->proxy_gid)
		return lockdown(cfg, dst, local);
	if (uid_excluded(cfg, uid, port, proto))
		return PASS;
	if (dns) {
		if (cfg->flags & CFG_DNS_ALL)
			return REDIRECT_DNS;
		if ((cfg->flags & CFG_DNS_RESOLVERS) && bpf_map_lookup_elem(&dns_servers, dst))
			return REDIRECT_DNS;
	}
	if (!tcp)
		return lockdown(cfg, dst, local);
	if (local)
		return PASS;
	if (in_trie(&exclude_out_cidrs, dst))
		return lockdown(cfg, dst, local);
	if (port_has(port, PORT_EXCLUDE_OUT))
		return lockdown(cfg, dst, local);
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

static __always_inline void count_verdict(enum verdict v)
{
	switch (v) {
	case REDIRECT_OUT:
		count(STAT_REDIRECT_OUT);
		break;
	case REDIRECT_IN:
		count(STAT_REDIRECT_IN);
		break;
	case REDIRECT_DNS:
		count(STAT_REDIRECT_DNS);
		break;
	case REJECT:
		count(STAT_REJECT);
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
	struct config *cfg = get_config();
	struct bpf_sock *sk = ctx->sk;
	struct addr dst, src;

	if (!cfg || !sk)
		return 1;
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

	enum verdict v = decide(cfg, sk, &dst, port, tcp, &src);
	count_verdict(v);
	if (v == PASS)
		return 1;
	if (v == REJECT)
		return 0;

	__u16 family = v6 && !is_v4mapped(&dst) ? AF_INET6 : AF_INET;
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
	struct config *cfg = get_config();
	struct bpf_sock *sk = ctx->sk;
	struct addr dst, src;

	if (!cfg || !sk || ctx->protocol != IPPROTO_UDP)
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

	enum verdict v = decide(cfg, sk, &dst, port, 0, &src);
	if (v == PASS)
		return 1;
	count_verdict(v);
	if (v != REDIRECT_DNS)
		return 0;

	struct dns_state *st = dns_state(sk, 1);
	if (!st)
		return 1; /* cannot restore the reply's source: leave it alone */
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
	struct config *cfg = get_config();
	struct bpf_sock *sk = ctx->sk;
	struct addr from;

	if (!cfg || !sk)
		return 1;
	if (bpf_ntohs((__u16)ctx->user_port) != cfg->dns_port)
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
	count(STAT_DNS_REPLY);
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

/* Both families' fields are read unconditionally: the verifier refuses a
 * context pointer the compiler would otherwise offset in a shared branch. */
/* dns_packet reads a UDP datagram to (egress) or from (ingress) the DNS
 * interceptor on loopback, and its DNS id. */
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

static __always_inline struct bpf_sock *udp_sock(struct __sk_buff *skb, struct config *cfg)
{
	if (!cfg || !(cfg->flags & (CFG_DNS_ALL | CFG_DNS_RESOLVERS)))
		return NULL;
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return NULL;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_UDP)
		return NULL;
	return sk;
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	if (!maybe_udp(skb))
		return 1;
	struct config *cfg = get_config();
	struct bpf_sock *sk = udp_sock(skb, cfg);
	struct dns_key k = {};

	if (!sk || !dns_packet(skb, 1, cfg->dns_port, &k.id))
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
	struct config *cfg = get_config();
	struct bpf_sock *sk = udp_sock(skb, cfg);
	struct dns_key k = {};

	if (!sk || !dns_packet(skb, 0, cfg->dns_port, &k.id))
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

static __always_inline void local_key(struct bpf_sock_ops *skops, struct peer_key *k)
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
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	struct peer_key k = {};
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

SEC("cgroup/getsockopt")
int get_sockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct peer_key k = {};
	int v6;

	if (ctx->level == SOL_IP && ctx->optname == SO_ORIGINAL_DST)
		v6 = 0;
	else if (ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST)
		v6 = 1;
	else
		return 1;
	if (!sk)
		return 1;

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

	struct orig_dst *o = bpf_map_lookup_elem(&peer_orig, &k);
	if (!o) {
		count(STAT_ORIG_MISS);
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
			return 1; /* an IPv6 destination has no IPv4 form */
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
	count(STAT_ORIG_HIT);
	return 1;
}

SEC("sk_lookup")
int inbound_lookup(struct bpf_sk_lookup *ctx)
{
	struct config *cfg = get_config();
	struct addr local, remote;
	__u32 key;

	if (!cfg || !(cfg->flags & CFG_INBOUND) || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		addr_from4(&local, ctx->local_ip4);
		addr_from4(&remote, ctx->remote_ip4);
		key = 0;
	} else {
		if (!(cfg->flags & CFG_IPV6))
			return SK_PASS;
		local.ip[0] = ctx->local_ip6[0];
		local.ip[1] = ctx->local_ip6[1];
		local.ip[2] = ctx->local_ip6[2];
		local.ip[3] = ctx->local_ip6[3];
		remote.ip[0] = ctx->remote_ip6[0];
		remote.ip[1] = ctx->remote_ip6[1];
		remote.ip[2] = ctx->remote_ip6[2];
		remote.ip[3] = ctx->remote_ip6[3];
		key = 1;
	}
	/* Traffic from the workload to itself crosses the loopback interface:
	 * its source is one of the workload's own addresses. */
	if (is_loopback(&local) || is_loopback(&remote) || bpf_map_lookup_elem(&local_addrs, &remote))
		return SK_PASS;
	if (in_trie(&exclude_in_cidrs, &remote))
		return SK_PASS;
	if (port_has((__u16)ctx->local_port, PORT_EXCLUDE_IN))
		return SK_PASS;

	struct bpf_sock *sk = bpf_map_lookup_elem(&inbound_listener, &key);
	if (!sk && key == 0) {
		/* A dual-stack listener serves IPv4 too. */
		key = 1;
		sk = bpf_map_lookup_elem(&inbound_listener, &key);
	}
	/* No proxy listening yet: refuse, as a REDIRECT to a closed port does.
	 * Passing would hand the connection to the application behind the
	 * proxy's back. SK_DROP makes the lookup fail, and TCP answers with
	 * a reset. */
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (!err)
		count(STAT_INBOUND_STEER);
	return SK_PASS;
}

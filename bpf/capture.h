/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by shunt's capture programs and their loader
 * (redirect/ebpf). The loader writes config, the CIDR tries, the port
 * table and the UID rules from a redirect.Plan; the programs only read them,
 * so a plan change is a map update and never a reload.
 */
#ifndef SHUNT_CAPTURE_H
#define SHUNT_CAPTURE_H

#include <linux/bpf.h>

/* linux/in.h needs asm/byteorder.h, which the BPF target lacks. */
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80      /* linux/netfilter_ipv4.h */
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h */

/* config.flags */
#define CFG_INBOUND (1 << 0)       /* capture inbound TCP */
#define CFG_IPV6 (1 << 1)          /* capture IPv6 as well as IPv4 */
#define CFG_EGRESS (1 << 2)        /* egress lockdown */
#define CFG_PROXY_GID (1 << 3)     /* proxy_gid is set */
#define CFG_DNS_RESOLVERS (1 << 4) /* DNS to dns_servers goes to dns_port */
#define CFG_DNS_ALL (1 << 5)       /* DNS to any server goes to dns_port */
#define CFG_INCLUDE_OUT_CIDRS (1 << 6) /* capture outbound TCP to include_out_cidrs only */
#define CFG_INCLUDE_OUT_PORTS (1 << 7) /* capture outbound TCP to PORT_INCLUDE_OUT ports only */
#define CFG_INCLUDE_IN_PORTS (1 << 8)  /* capture inbound TCP to PORT_INCLUDE_IN ports only */

/* port_flags values */
#define PORT_EXCLUDE_OUT (1 << 0)
#define PORT_EXCLUDE_IN (1 << 1)
#define PORT_INCLUDE_OUT (1 << 2)
#define PORT_INCLUDE_IN (1 << 3)

/* uid_rule.proto */
#define RULE_TCP (1 << 0)
#define RULE_UDP (1 << 1)

#define MAX_UID_RULES 64
#define DNS_RING 16

struct config {
	__u32 flags;
	__u32 proxy_uid;
	__u32 proxy_gid;
	__u32 bypass_mark; /* 0: none */
	__u16 outbound_port; /* host byte order, like the ports below */
	__u16 inbound_port;
	__u16 dns_port;
	__u16 uid_rules;  /* entries used in uid_rules */
	__u16 admin_port; /* the agent's admin endpoint; 0: not guarded */
	__u16 pad;
};

/* Addresses are kept as 16 bytes in network order; IPv4 as ::ffff:a.b.c.d,
 * so one map serves both families and a v4-mapped IPv6 socket matches the
 * IPv4 entries. */
struct addr {
	__u32 ip[4];
};

/* An endpoint of the proxy that lockdown lets TCP reach on this port only.
 * family follows the address (AF_INET for ::ffff:a.b.c.d), never the
 * socket, so a v4-mapped IPv6 socket matches the IPv4 entry. */
struct endpoint {
	__u32 ip[4];
	__u16 port; /* host byte order */
	__u16 family;
};

struct lpm_key {
	__u32 prefixlen; /* of the 128-bit form */
	__u32 ip[4];
};

/* The destination an application asked for before capture rewrote it. */
struct orig_dst {
	__u32 ip[4];
	__u16 port;   /* network byte order */
	__u16 family; /* AF_INET or AF_INET6: what the application used */
};

/* The proxy-side view of a captured connection: the peer address the
 * proxy's accepted socket sees (the application's socket's local address). */
struct peer_key {
	__u32 ip[4];
	__u32 port; /* host byte order */
};

struct uid_rule {
	__u32 uid_first;
	__u32 uid_last;
	__u16 port_first;
	__u16 port_last;
	__u32 proto; /* RULE_TCP | RULE_UDP */
};

/* Per-socket DNS state. recvmsg sees only a reply's source, which is the
 * interceptor's for every reply; what tells replies apart is the DNS id, which
 * only packet programs can read. So: sendmsg (or connect) notes the resolver
 * of the query being sent in last; the egress program files it under
 * (socket cookie, DNS id) in dns_queries; the ingress program, which runs as
 * a reply is queued on the socket, looks the reply's id up and appends the
 * resolver to replies, in the order of the socket's receive queue; recvmsg
 * takes them in that order. */
struct dns_state {
	struct orig_dst connected; /* a connected socket's resolver */
	struct orig_dst last;      /* the resolver of the query being sent */
	__u32 head;
	__u32 tail;
	struct orig_dst replies[DNS_RING]; /* port 0: not a redirected query */
};

struct dns_key {
	__u64 cookie;
	__u32 id; /* DNS message id, network byte order */
	__u32 pad;
};

enum stat {
	STAT_REDIRECT_OUT,
	STAT_REDIRECT_IN,
	STAT_REDIRECT_DNS,
	STAT_REJECT,
	STAT_ORIG_HIT,
	STAT_ORIG_MISS,
	STAT_INBOUND_STEER,
	STAT_DNS_REPLY,
	STAT_MAX,
};

#endif

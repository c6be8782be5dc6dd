/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The IPv4, IPv6 and UDP headers, as shunt's packet programs read them
 * with bpf_skb_load_bytes (linux/ip.h and linux/ipv6.h need headers the
 * BPF target lacks).
 */
#ifndef SHUNT_PACKET_H
#define SHUNT_PACKET_H

#include <linux/types.h>

struct ip4 {
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
};

struct ip6 {
	__u32 vtcfl;
	__u16 plen;
	__u8 next;
	__u8 hops;
	__u32 saddr[4];
	__u32 daddr[4];
};

struct udp {
	__u16 sport;
	__u16 dport;
	__u16 len;
	__u16 csum;
};

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by the kernel DNS answerer (dns_answer.c) and its loader
 * (dnsproxy/kernelanswers). The loader writes one names entry per table
 * name from the interceptor's table; the program only reads them.
 */
#ifndef SHUNT_DNS_ANSWER_H
#define SHUNT_DNS_ANSWER_H

#include <linux/types.h>

/* The longest name answered in the kernel, in wire form with its root
 * label; longer ones are left to the interceptor. */
#define ANSWER_NAME_MAX 128
/* The packed answer records of one type that fit one entry: 12 A or 6
 * AAAA records. A name with more is left to the interceptor. */
#define ANSWER_RECORDS_MAX 192

/* answer_stats indexes */
enum {
	STAT_ANSWERED, /* answered in the kernel */
	STAT_MISSED,   /* a plain query for a name not in the map */
	STAT_TOO_BIG,  /* the answer would exceed the client's limit */
	STAT_PASSED,   /* anything else to the port: not a plain query */
	STAT_TRACKED,  /* a query conntrack has seen (NATed capture) */
	STAT_CACHED,   /* answered in the kernel from the cache */
	STAT_MAX,
};

/* answer_config.flags */
#define CONFIG_IPV6 (1 << 0) /* the interceptor listens on ::1 */

struct answer_config {
	__u16 port;  /* the interceptor's port, host byte order; 0: answer nothing */
	__u16 flags;
	__u32 ipv4;  /* its IPv4 loopback address, network order; 0: none */
};

/* A name as the interceptor's table keys it: lower-case wire form, the
 * bytes after len zero. */
struct name_key {
	__u8 len;
	__u8 pad[3];
	__u8 name[ANSWER_NAME_MAX];
};

/* The A and AAAA answer records of one name, each packed as the
 * interceptor packs them: owner a compression pointer to the question,
 * class IN, the table's TTL. A type with no addresses has count 0 and is
 * answered NOERROR with no records, as the interceptor does. */
struct name_answers {
	__u16 v4_count; /* A */
	__u16 v4_len;
	__u16 v6_count; /* AAAA */
	__u16 v6_len;
	__u8 v4[ANSWER_RECORDS_MAX];
	__u8 v6[ANSWER_RECORDS_MAX];
};

/* A forwarded answer the interceptor's cache holds, packed as its fast
 * path sends it (dnsproxy/wirecache.go): kept until it expires, for
 * queries that spell the name as the one that fetched it. */
#define CACHE_TAIL_MAX 384
#define CACHE_TTLS_MAX 16

/* cache_key.flags */
#define CACHE_DO (1 << 0)   /* the query's DO bit */
#define CACHE_CD (1 << 1)   /* the query's CD bit */
#define CACHE_EDNS (1 << 2) /* the query had an OPT record */

struct cache_key {
	struct name_key name;
	__u16 qtype;
	__u8 flags;
	__u8 pad;
};

struct cached_answer {
	__u64 stored;  /* bpf_ktime_get_ns() when the upstream answered */
	__u64 expires; /* and when the cache stops answering from it */
	__u32 ttl[CACHE_TTLS_MAX];     /* the records' TTLs as stored */
	__u16 ttl_off[CACHE_TTLS_MAX]; /* where each is, in tail */
	__u16 need;     /* the smallest client limit the answer fits */
	__u16 tail_len; /* bytes after the question */
	__u8 hdr[12];   /* header: ID 0, RD clear */
	__u8 qname_len;
	__u8 ttl_count;
	__u8 pad[6];
	__u8 qname[ANSWER_NAME_MAX]; /* the name as spelled, zero after it */
	__u8 tail[CACHE_TAIL_MAX];   /* answer, authority, additional */
};

#endif

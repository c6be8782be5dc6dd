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
	STAT_MAX,
};

struct answer_config {
	__u16 port; /* the interceptor's port, host byte order; 0: answer nothing */
	__u16 pad;
	__u32 pad2;
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

#endif

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * shunt's kernel DNS answerer: a tc program on the workload's loopback that
 * turns a plain query to the DNS interceptor into the interceptor's own
 * answer and sends it back, so that the interceptor is never woken for it.
 * Whatever it does not answer goes on to the interceptor untouched.
 *
 * It answers exactly what the interceptor's fast path answers, byte for
 * byte (dnsproxy/wire.go, parseQuery), from two maps the interceptor keeps:
 *
 *   names  its table (appendTableAnswer): one question of class IN, type A
 *          or AAAA, no compression, at most an OPT record of version 0
 *          whose options are NSID, cookie or padding; the header's ID, RD
 *          and CD as asked, QR, AA and RA set; the question as asked (the
 *          client's letter case kept); the table's packed records; an OPT
 *          record with the interceptor's buffer size and the DO bit as
 *          asked when the query had one;
 *   cache  the fresh answers of its cache, for names the table lacks
 *          (dnsproxy/wirecache.go, appendCached): the packed answer stored,
 *          with the client's ID and RD bit and the TTLs aged, for a query
 *          spelling the name as the one that fetched it.
 *
 * A name neither holds, a longer name, a bigger answer than the client
 * takes, an expired answer, or anything else is the interceptor's.
 *
 * The query arrives at tc egress of lo with its Ethernet header: the
 * capture has already sent it to the interceptor's loopback address and
 * port, so only those are looked at, and only when conntrack has not seen
 * it (see tracked).
 */
#include "dns_answer.h"
#include "packet.h"

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define IPPROTO_UDP 17
#define DNS_TYPE_A 1
#define DNS_TYPE_AAAA 28
#define DNS_TYPE_OPT 41
#define DNS_CLASS_IN 1
#define EDNS_BUF_SIZE 1232 /* dnsproxy's ednsBufSize */
#define MIN_MSG_SIZE 512
/* The longest query looked at: a longer one is not plain for any name
 * this program answers. */
#define QUERY_MAX (12 + ANSWER_NAME_MAX + 4 + 11 + OPTIONS_MAX)
#define OPTIONS_MAX 48
#define OPTIONS_COUNT 4

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct answer_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct name_key);
	__type(value, struct name_answers);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct cache_key);
	__type(value, struct cached_answer);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} answer_stats SEC(".maps");

/* Per-CPU room for what does not fit the 512-byte stack: the query's
 * name, the keys, and the old and new bytes after the question, each with a
 * leading byte so that both start on the datagram's 16-bit word boundary
 * for the checksum, and three trailing ones for the 4-byte rounding. A
 * cached answer's bytes are copied 8 at a time instead, to offset 0, and
 * their sum turned to the datagram's parity afterwards (see sum_at). */
struct scratch {
	__u8 cache_tail[CACHE_TAIL_MAX + 8]; /* first: 8-byte aligned */
	__u8 spelled[ANSWER_NAME_MAX];       /* the name as asked, zero after it */
	__u8 q[ANSWER_NAME_MAX];
	struct cache_key ckey;
	struct name_key key;
	__u8 old_tail[1 + 64 + 3];
	__u8 new_tail[1 + ANSWER_RECORDS_MAX + 11 + 3];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} answer_scratch SEC(".maps");

static __always_inline int count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&answer_stats, &what);
	if (n)
		(*n)++;
	return TC_ACT_OK;
}

/* The kernel's socket buffer, for the one field read from it (CO-RE: its
 * offset is this kernel's). */
struct sk_buff {
	unsigned long _nfct;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* tracked reports whether conntrack has seen the query. Then its entry
 * goes on with the packet, in the query's direction, and an answer made
 * of it would meet the query's NAT on the way in again: with the iptables
 * and nftables engines the redirect to the interceptor would be applied
 * to the answer too, and send it to the interceptor instead of the
 * client. Such queries are the interceptor's. */
static __always_inline int tracked(struct __sk_buff *skb)
{
	if (!bpf_core_field_exists(((struct sk_buff *)0)->_nfct))
		return 0; /* a kernel without conntrack */
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	return BPF_CORE_READ(kskb, _nfct) != 0;
}

/* bounded hides x from the compiler, so that a bounds check it would
 * prove redundant stays in for the verifier, which tracks less. */
#define bounded(x) asm volatile("" : "+r"(x))

/* round4 is n rounded up to a multiple of 4, for bpf_csum_diff. */
static __always_inline __u32 round4(__u32 n)
{
	return (n + 3) & ~3U;
}

/* csum_add adds two partial ones' complement sums. */
static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	__u64 t = (__u64)a + b;
	return (__u32)((t & 0xffffffff) + (t >> 32));
}

/* sum_at turns the partial sum of bytes summed from an even offset into
 * their sum at an odd one: the same bytes one place along swap each 16-bit
 * word's halves, and so the folded sum's. */
static __always_inline __u32 sum_at(__u32 sum, int odd)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	if (odd)
		sum = ((sum & 0xff) << 8) | (sum >> 8);
	return sum;
}

SEC("tc")
int dns_answer(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct answer_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->port)
		return TC_ACT_OK;

	/* Network and UDP headers; only datagrams to the interceptor on
	 * loopback. */
	__u32 l4;
	int v6;
	struct ip4 ip;
	struct ip6 ip6;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return TC_ACT_OK;
		if (ip.proto != IPPROTO_UDP || ip.vihl != 0x45 || (ip.frag & bpf_htons(0x3fff)))
			return TC_ACT_OK;
		if (!cfg->ipv4 || ip.daddr != cfg->ipv4)
			return TC_ACT_OK;
		l4 = ETH_HLEN + sizeof(ip);
		v6 = 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return TC_ACT_OK;
		if (ip6.next != IPPROTO_UDP || !(cfg->flags & CONFIG_IPV6))
			return TC_ACT_OK;
		if (ip6.daddr[0] || ip6.daddr[1] || ip6.daddr[2] || ip6.daddr[3] != bpf_htonl(1))
			return TC_ACT_OK;
		l4 = ETH_HLEN + sizeof(ip6);
		v6 = 1;
	} else {
		return TC_ACT_OK;
	}
	struct udp udp;
	if (bpf_skb_load_bytes(skb, l4, &udp, sizeof(udp)))
		return TC_ACT_OK;
	if (bpf_ntohs(udp.dport) != cfg->port)
		return TC_ACT_OK;
	__u32 dns = l4 + sizeof(udp);
	__u32 ulen = bpf_ntohs(udp.len);
	if (ulen < sizeof(udp) + 12 + 5 || skb->len != l4 + ulen)
		return count(STAT_PASSED);
	__u32 dnslen = ulen - sizeof(udp);
	if (dnslen > QUERY_MAX)
		return count(STAT_PASSED);

	/* Header: QR=0, opcode QUERY, one question, no answers or
	 * authority, at most one additional record (OPT). */
	__u8 hdr[12];
	if (bpf_skb_load_bytes(skb, dns, hdr, sizeof(hdr)))
		return count(STAT_PASSED);
	if ((hdr[2] & 0xf8) || hdr[4] != 0 || hdr[5] != 1 || hdr[6] | hdr[7] | hdr[8] | hdr[9] || hdr[10] || hdr[11] > 1)
		return count(STAT_PASSED);

	if (tracked(skb))
		return count(STAT_TRACKED);

	struct scratch *s = bpf_map_lookup_elem(&answer_scratch, &zero);
	if (!s)
		return count(STAT_PASSED);

	/* The name, lower-cased into the key. */
	__u32 avail = dnslen - 12;
	if (avail > ANSWER_NAME_MAX)
		avail = ANSWER_NAME_MAX;
	if (avail < 1)
		return count(STAT_PASSED);
	if (bpf_skb_load_bytes(skb, dns + 12, s->q, avail))
		return count(STAT_PASSED);
	/* Labels first: where the name ends. */
	__u32 pos = 0, namelen = 0;
	for (int j = 0; j < ANSWER_NAME_MAX / 2; j++) {
		if (pos >= avail)
			return count(STAT_PASSED);
		__u8 l = s->q[pos & (ANSWER_NAME_MAX - 1)];
		if (l & 0xc0) /* no compression in a question */
			return count(STAT_PASSED);
		if (l == 0) {
			namelen = pos + 1;
			break;
		}
		pos += l + 1;
	}
	if (!namelen)
		return count(STAT_PASSED);
	/* Then every byte lower-cased: a length byte (below 64) is never
	 * a capital letter, so the labels need not be told apart here. */
	__builtin_memset(&s->key, 0, sizeof(s->key));
	__builtin_memset(s->spelled, 0, sizeof(s->spelled));
	for (__u32 i = 0; i < ANSWER_NAME_MAX; i++) {
		if (i >= namelen)
			break;
		__u8 c = s->q[i];
		s->spelled[i] = c;
		if (c >= 'A' && c <= 'Z')
			c += 'a' - 'A';
		s->key.name[i] = c;
	}
	s->key.len = namelen;

	__u8 qtc[4];
	if (bpf_skb_load_bytes(skb, dns + 12 + namelen, qtc, sizeof(qtc)))
		return count(STAT_PASSED);
	if (qtc[2] != 0 || qtc[3] != DNS_CLASS_IN)
		return count(STAT_PASSED);
	__u16 qtype = (__u16)qtc[0] << 8 | qtc[1];
	__u32 qend = 12 + namelen + 4;
	if (qend > dnslen)
		return count(STAT_PASSED);

	/* OPT: root owner, type 41, class the UDP size, TTL the extended
	 * rcode, version and flags; its options only NSID, cookie and
	 * padding, which the interceptor's table answers ignore. */
	int edns = 0, dobit = 0;
	__u16 udpsize = 0;
	__u32 oldtail = dnslen - qend;
	if (hdr[11]) {
		__u8 opt[11];
		if (bpf_skb_load_bytes(skb, dns + qend, opt, sizeof(opt)))
			return count(STAT_PASSED);
		if (opt[0] != 0 || opt[1] != 0 || opt[2] != DNS_TYPE_OPT || opt[6] != 0)
			return count(STAT_PASSED);
		udpsize = (__u16)opt[3] << 8 | opt[4];
		dobit = opt[7] & 0x80;
		__u32 rdlen = (__u32)opt[9] << 8 | opt[10];
		if (rdlen > OPTIONS_MAX || qend + 11 + rdlen != dnslen)
			return count(STAT_PASSED);
		__u32 p = qend + 11;
		for (int j = 0; j < OPTIONS_COUNT && p < dnslen; j++) {
			__u8 o[4];
			if (bpf_skb_load_bytes(skb, dns + p, o, sizeof(o)))
				return count(STAT_PASSED);
			__u16 code = (__u16)o[0] << 8 | o[1];
			if (code != 3 && code != 10 && code != 12)
				return count(STAT_PASSED);
			p += 4 + ((__u32)o[2] << 8 | o[3]);
		}
		if (p != dnslen)
			return count(STAT_PASSED);
		edns = 1;
	} else if (oldtail != 0) {
		return count(STAT_PASSED);
	}
	__u32 limit = edns && udpsize >= MIN_MSG_SIZE ? udpsize : MIN_MSG_SIZE;
	__u32 odd = qend & 1;

	/* The old bytes after the question, at the parity they have in the
	 * datagram (the DNS message starts at its byte 8). */
	if (oldtail > 11 + OPTIONS_MAX)
		return count(STAT_PASSED);
	/* The mask keeps the bound in the register the helper gets, which
	 * may not be the one the compiler checked. */
	bounded(oldtail);
	oldtail &= 63;
	__builtin_memset(s->old_tail, 0, sizeof(s->old_tail));
	if (oldtail && bpf_skb_load_bytes(skb, dns + qend, s->old_tail + odd, oldtail))
		return count(STAT_PASSED);
	__u64 osz = round4(odd + oldtail);
	bounded(osz);
	if (osz > sizeof(s->old_tail))
		return count(STAT_PASSED);

	__u8 newhdr[12];
	__u32 newtail;
	int cached = 0;
	__s64 d;
	struct name_answers *v = bpf_map_lookup_elem(&names, &s->key);
	if (v) {
		/* A table name's other types are the interceptor's. */
		if (qtype != DNS_TYPE_A && qtype != DNS_TYPE_AAAA)
			return count(STAT_PASSED);
		__u16 n = qtype == DNS_TYPE_A ? v->v4_count : v->v6_count;
		__u32 alen = qtype == DNS_TYPE_A ? v->v4_len : v->v6_len;
		if (alen > ANSWER_RECORDS_MAX)
			return count(STAT_PASSED);
		newtail = alen + (edns ? 11 : 0);
		if (qend + newtail > limit)
			return count(STAT_TOO_BIG);
		s->new_tail[0] = 0;
		if (qtype == DNS_TYPE_A)
			__builtin_memcpy(s->new_tail + odd, v->v4, ANSWER_RECORDS_MAX);
		else
			__builtin_memcpy(s->new_tail + odd, v->v6, ANSWER_RECORDS_MAX);
		__u32 end = odd + alen;
		if (end > 1 + ANSWER_RECORDS_MAX)
			return count(STAT_PASSED);
		if (edns) {
			__u8 *o = s->new_tail + end;
			o[0] = 0;
			o[1] = 0;
			o[2] = DNS_TYPE_OPT;
			o[3] = EDNS_BUF_SIZE >> 8;
			o[4] = EDNS_BUF_SIZE & 0xff;
			o[5] = 0;
			o[6] = 0;
			o[7] = dobit ? 0x80 : 0;
			o[8] = 0;
			o[9] = 0;
			o[10] = 0;
			end += 11;
		}
		s->new_tail[end] = 0;
		s->new_tail[end + 1] = 0;
		s->new_tail[end + 2] = 0;
		newhdr[0] = hdr[0];
		newhdr[1] = hdr[1];
		newhdr[2] = 0x84 | (hdr[2] & 0x01);
		newhdr[3] = 0x80 | (hdr[3] & 0x10);
		newhdr[4] = 0;
		newhdr[5] = 1;
		newhdr[6] = n >> 8;
		newhdr[7] = n & 0xff;
		newhdr[8] = 0;
		newhdr[9] = 0;
		newhdr[10] = 0;
		newhdr[11] = edns;

		/* The checksum follows every byte changed: the DNS header,
		 * the bytes after the question, and the UDP length (in the
		 * header and the pseudo-header). Swapping addresses and ports
		 * changes no sum. A helper knows whether the sum is still to
		 * be filled in (CHECKSUM_PARTIAL, the usual case on lo) or
		 * complete. */
		d = bpf_csum_diff((__be32 *)hdr, sizeof(hdr), (__be32 *)newhdr, sizeof(newhdr), 0);
		if (d < 0)
			return count(STAT_PASSED);
		__u64 nsz = round4(end);
		bounded(nsz);
		if (nsz > sizeof(s->new_tail))
			return count(STAT_PASSED);
		d = bpf_csum_diff((__be32 *)s->old_tail, osz, (__be32 *)s->new_tail, nsz, (__wsum)d);
		if (d < 0)
			return count(STAT_PASSED);
	} else {
		/* Not a table name: the cache, as the interceptor's fast
		 * path reads it, for an answer still fresh and a name
		 * spelled as when it was stored. */
		struct cache_key *ck = &s->ckey;
		__builtin_memcpy(&ck->name, &s->key, sizeof(s->key));
		ck->qtype = qtype;
		ck->flags = (dobit ? CACHE_DO : 0) | ((hdr[3] & 0x10) ? CACHE_CD : 0) | (edns ? CACHE_EDNS : 0);
		ck->pad = 0;
		struct cached_answer *c = bpf_map_lookup_elem(&cache, ck);
		if (!c)
			return count(STAT_MISSED);
		__u64 now = bpf_ktime_get_ns();
		if (now >= c->expires || now < c->stored)
			return count(STAT_MISSED); /* expired: the interceptor's */
		/* Both names are zero after their end: compared whole, 8
		 * bytes at a time, without a branch per byte. */
		__u64 diff = c->qname_len ^ namelen;
		__u64 *a = (__u64 *)s->spelled, *b = (__u64 *)c->qname;
		for (int i = 0; i < ANSWER_NAME_MAX / 8; i++)
			diff |= a[i] ^ b[i];
		if (diff)
			return count(STAT_MISSED); /* spelled otherwise */
		if (c->need > limit)
			return count(STAT_TOO_BIG);
		newtail = c->tail_len;
		if (newtail > CACHE_TAIL_MAX)
			return count(STAT_PASSED);
		__builtin_memcpy(s->cache_tail, c->tail, CACHE_TAIL_MAX);
		__u32 age = (now - c->stored) / 1000000000ULL;
		for (__u32 j = 0; j < CACHE_TTLS_MAX; j++) {
			if (j >= c->ttl_count)
				break;
			__u32 off = c->ttl_off[j];
			if (off > CACHE_TAIL_MAX - 4)
				return count(STAT_PASSED);
			__u32 t = c->ttl[j];
			t = t > age ? t - age : 0;
			s->cache_tail[off] = t >> 24;
			s->cache_tail[off + 1] = t >> 16;
			s->cache_tail[off + 2] = t >> 8;
			s->cache_tail[off + 3] = t;
		}
		__u64 nsz = round4(newtail);
		bounded(nsz);
		if (nsz > CACHE_TAIL_MAX)
			return count(STAT_PASSED);
		/* Zero the rounding bytes, which the copy filled from the
		 * entry. */
		for (__u32 z = 0; z < 3; z++) {
			__u32 at = newtail + z;
			if (at < CACHE_TAIL_MAX + 8)
				s->cache_tail[at] = 0;
		}
		__builtin_memcpy(newhdr, c->hdr, sizeof(newhdr));
		newhdr[0] = hdr[0];
		newhdr[1] = hdr[1];
		newhdr[2] = (c->hdr[2] & ~0x01) | (hdr[2] & 0x01);

		d = bpf_csum_diff((__be32 *)hdr, sizeof(hdr), (__be32 *)newhdr, sizeof(newhdr), 0);
		if (d < 0)
			return count(STAT_PASSED);
		d = bpf_csum_diff((__be32 *)s->old_tail, osz, NULL, 0, (__wsum)d);
		if (d < 0)
			return count(STAT_PASSED);
		__s64 x = bpf_csum_diff(NULL, 0, (__be32 *)s->cache_tail, nsz, 0);
		if (x < 0)
			return count(STAT_PASSED);
		d = csum_add((__u32)d, sum_at((__u32)x, odd));
		cached = 1;
	}

	__u32 newulen = sizeof(udp) + qend + newtail;
	if (bpf_skb_change_tail(skb, l4 + newulen, 0))
		return count(STAT_PASSED);

	__u64 mangled0 = v6 ? 0 : BPF_F_MARK_MANGLED_0;
	__u32 csum = l4 + 6;
	__be16 oldlen = udp.len, newlen = bpf_htons(newulen);
	if (bpf_l4_csum_replace(skb, csum, 0, d, mangled0) ||
	    bpf_l4_csum_replace(skb, csum, oldlen, newlen, mangled0 | 2) ||
	    bpf_l4_csum_replace(skb, csum, oldlen, newlen, mangled0 | BPF_F_PSEUDO_HDR | 2))
		return TC_ACT_SHOT;

	/* From here on the packet is the answer; a failure drops it, and
	 * the client asks again. */
	struct udp r = {.sport = udp.dport, .dport = udp.sport, .len = newlen};
	if (bpf_skb_store_bytes(skb, l4, &r, 6, 0))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, dns, newhdr, sizeof(newhdr), 0))
		return TC_ACT_SHOT;
	__u64 ntl = newtail;
	bounded(ntl);
	if (cached) {
		if (ntl > CACHE_TAIL_MAX)
			return TC_ACT_SHOT;
		if (ntl && bpf_skb_store_bytes(skb, dns + qend, s->cache_tail, ntl, 0))
			return TC_ACT_SHOT;
	} else {
		if (ntl > sizeof(s->new_tail) - 4)
			return TC_ACT_SHOT;
		if (ntl && bpf_skb_store_bytes(skb, dns + qend, s->new_tail + odd, ntl, 0))
			return TC_ACT_SHOT;
	}
	if (v6) {
		__u16 plen = bpf_htons(newulen);
		__u32 addrs[8] = {ip6.daddr[0], ip6.daddr[1], ip6.daddr[2], ip6.daddr[3],
				  ip6.saddr[0], ip6.saddr[1], ip6.saddr[2], ip6.saddr[3]};
		if (bpf_skb_store_bytes(skb, ETH_HLEN + 4, &plen, sizeof(plen), 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + 8, addrs, sizeof(addrs), 0))
			return TC_ACT_SHOT;
	} else {
		__be16 tot = bpf_htons(sizeof(ip) + newulen);
		__u32 addrs[2] = {ip.daddr, ip.saddr};
		if (bpf_l3_csum_replace(skb, ETH_HLEN + 10, ip.len, tot, 2) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + 2, &tot, sizeof(tot), 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + 12, addrs, sizeof(addrs), 0))
			return TC_ACT_SHOT;
	}
	count(cached ? STAT_CACHED : STAT_ANSWERED);
	return TC_ACT_OK;
}

/* Socket helpers shared by the BPF programs (netflow.bpf.c, http.bpf.c):
 * the address tuple of a struct sock, read with CO-RE.
 *
 * BPF side only (needs vmlinux.h and bpf_core_read.h). The including
 * program defines the knob `const volatile __u8 ipv6_disabled` first. */
#ifndef DKEBPF_SOCK_TUPLE_H
#define DKEBPF_SOCK_TUPLE_H

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

/* Copy an address into a 16-byte slot, IPv4 (and v4-mapped v6) in the first
 * four bytes. Returns the family to report (4 or 6). */
static __always_inline __u8 put_addr(__u8 *dst, const __u8 *v6, __u32 v4, int is_v6)
{
	if (is_v6 && !is_v4_mapped(v6)) {
		__builtin_memcpy(dst, v6, 16);
		return 6;
	}
	__u32 *w = (__u32 *)dst;
	w[0] = is_v6 ? ((const __u32 *)v6)[3] : v4;
	w[1] = w[2] = w[3] = 0;
	return 4;
}

struct sock_tuple {
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport, rport;
	__u8 family;
	__u8 proto;
};

/* Read family, protocol and addresses of a socket. Returns 0 when the socket
 * is not an IPv4/IPv6 TCP or UDP socket we report. */
static __always_inline int read_tuple(const struct sock *sk, struct sock_tuple *t)
{
	__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u16 type = BPF_CORE_READ(sk, sk_type);
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);

	if (fam != AF_INET && fam != AF_INET6)
		return 0;
	if (fam == AF_INET6 && ipv6_disabled)
		return 0;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if ((proto == IPPROTO_TCP && type != 1 /* SOCK_STREAM */) ||
	    (proto == IPPROTO_UDP && type != 2 /* SOCK_DGRAM */))
		return 0;
	t->proto = proto;
	t->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (fam == AF_INET6) {
		__u8 l[16], r[16];
		BPF_CORE_READ_INTO(&l, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&r, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		t->family = put_addr(t->laddr, l, 0, 1);
		put_addr(t->raddr, r, 0, 1);
	} else {
		t->family = put_addr(t->laddr, 0, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr), 0);
		put_addr(t->raddr, 0, BPF_CORE_READ(sk, __sk_common.skc_daddr), 0);
	}
	return 1;
}

#endif

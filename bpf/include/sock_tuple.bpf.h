/* Socket constants and helpers shared by the BPF programs (netflow.bpf.c,
 * http.bpf.c, tls.bpf.c): the address tuple of a struct sock, read with CO-RE.
 *
 * BPF side only (needs vmlinux.h and bpf_core_read.h). The including
 * program defines the knob `const volatile __u8 ipv6_disabled` first. */
#ifndef DKEBPF_SOCK_TUPLE_H
#define DKEBPF_SOCK_TUPLE_H

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define MSG_PEEK 2
#define MSG_ERRQUEUE 0x2000

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

/* bpf_rdonly_cast (kernel >= 6.2, a kfunc every program type may call):
 * the verifier then knows the pointer as the given kernel type and lets the
 * program read its fields with plain loads (each JITed as one load with an
 * exception-table fixup: a bad pointer reads as 0, like a failed
 * bpf_probe_read_kernel). The call itself is rewritten by the verifier into
 * a register move, so it costs nothing, where a bpf_probe_read_kernel call
 * per field (BPF_CORE_READ) costs ~30-50 ns on a KVM guest. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define KERNEL_CAST(type, ptr) ((type *)bpf_rdonly_cast((const void *)(ptr), bpf_core_type_id_kernel(type)))

/* Read family, protocol and addresses of a socket. Returns 0 when the socket
 * is not an IPv4/IPv6 TCP or UDP socket we report. */
static __always_inline int read_tuple(const struct sock *sk_any, struct sock_tuple *t)
{
	const struct sock *sk = KERNEL_CAST(struct sock, sk_any);
	__u16 fam = sk->__sk_common.skc_family;
	__u16 type = sk->sk_type;
	__u16 proto = sk->sk_protocol;

	if (fam != AF_INET && fam != AF_INET6)
		return 0;
	if (fam == AF_INET6 && ipv6_disabled)
		return 0;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if ((proto == IPPROTO_TCP && type != SOCK_STREAM) ||
	    (proto == IPPROTO_UDP && type != SOCK_DGRAM))
		return 0;
	t->proto = proto;
	t->lport = sk->__sk_common.skc_num;
	t->rport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (fam == AF_INET6) {
		__u8 l[16], r[16];
		__builtin_memcpy(l, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(r, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
		t->family = put_addr(t->laddr, l, 0, 1);
		put_addr(t->raddr, r, 0, 1);
	} else {
		t->family = put_addr(t->laddr, 0, sk->__sk_common.skc_rcv_saddr, 0);
		put_addr(t->raddr, 0, sk->__sk_common.skc_daddr, 0);
	}
	return 1;
}

#endif

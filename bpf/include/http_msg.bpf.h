/* HTTP/1.x message starts and per-connection byte counting, shared by the
 * programs that send one struct l7_event per message start and count the
 * calls in between in a struct http_conn (include/http.h): bpf/http.bpf.c
 * (socket syscalls) and bpf/tls.bpf.c (OpenSSL plaintext).
 * BPF-only (needs vmlinux.h and include/http.h). */
#ifndef DKEBPF_HTTP_MSG_H
#define DKEBPF_HTTP_MSG_H

/* Does the buffer start like an HTTP/1.x request or status line? Four
 * bytes cover every method of RFC 9110 section 9 and PATCH (RFC 5789);
 * user space parses the whole line and treats anything else as payload. */
static __always_inline int looks_like_http(const __u8 *p)
{
	__u32 w = (__u32)p[0] | (__u32)p[1] << 8 | (__u32)p[2] << 16 | (__u32)p[3] << 24;
#define W(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)
	if (w == W('H', 'T', 'T', 'P'))
		return p[4] == '/' && p[5] == '1' && p[6] == '.';
	return w == W('G', 'E', 'T', ' ') || w == W('P', 'O', 'S', 'T') || w == W('P', 'U', 'T', ' ') ||
	       w == W('H', 'E', 'A', 'D') || w == W('D', 'E', 'L', 'E') || w == W('O', 'P', 'T', 'I') ||
	       w == W('P', 'A', 'T', 'C') || w == W('C', 'O', 'N', 'N') || w == W('T', 'R', 'A', 'C');
#undef W
}

/* A call's bytes, added to its connection's counters. */
static __always_inline void count_bytes(struct http_conn *hc, __u8 op, __s64 n, __u64 ts)
{
	if (op == L7_OP_SEND) {
		__sync_fetch_and_add(&hc->sent, n);
		hc->ts_last_send = ts;
	} else {
		__sync_fetch_and_add(&hc->recv, n);
		hc->ts_last_recv = ts;
	}
}

#endif

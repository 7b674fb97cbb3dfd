// SPDX-License-Identifier: GPL-2.0
/* ebpf-trace: message starts on the TCP sockets of traced processes, with
 * the TCP sequence number of their first byte, from two tp_btf hooks and
 * no syscall tracepoint.
 *
 * tp_btf/sock_send_length, tp_btf/sock_recv_length (sock_sendmsg_nosec /
 *   sock_recvmsg_nosec, right after the protocol moved the data): for a
 *   process in `trace_pids` (or every process but the excluded ones when
 *   `trace_all` is set), a TCP socket's calls form runs in one direction;
 *   the first call of a run is a message start (a request or a response):
 *   one struct span_msg with the first TRACE_PAYLOAD_MAX bytes of the
 *   call (the user buffer from the task's saved registers,
 *   include/syscall_io.bpf.h), the thread, the time, and `seq`:
 *     send:    tcp_sock.write_seq - ret (tcp_sendmsg has advanced write_seq
 *              by every byte it queued, so this is the first byte's number)
 *     receive: tcp_sock.copied_seq - ret (tcp_recvmsg advanced copied_seq
 *              past the bytes it copied)
 *   The same numbers on both ends of a connection: the sender's write_seq
 *   and the receiver's copied_seq count the same byte stream, which is how
 *   the linker joins a client span to the server span across hosts.
 *   Other calls of the run only add to the socket's counters (trace_conns),
 *   but for the second when the first was shorter than TRACE_SHORT_START
 *   (include/trace.h: span_msg.more). On a connection that opened with
 *   the HTTP/2 client preface every call is sent (trace_conn.h2, more =
 *   TRACE_MORE_H2_CALL), with up to TRACE_MAX_IOV + TRACE_MAX_IOV_LOOP
 *   iovecs copied (bpf_loop). A connection user space gave up on
 *   (no protocol it knows in its first message starts: TLS, ssh, ...) is
 *   flagged `ignored` by it (trace_flags, read at a message start): only
 *   counted from then on.
 * tp_btf/tcp_destroy_sock: a TRACE_OP_CLOSE record with the final counters
 *   ends the last message of the socket.
 * tp_btf/sched_process_fork: a new process inherits its parent's entry in
 *   trace_pids (a server's forked workers, a shell's children), so it is
 *   traced from its first call, before user space rescans /proc.
 */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "include/syscall_io.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* knobs, set by user space between open and load */
const volatile __u8 ipv6_disabled = 0;
const volatile __u32 self_tgid = 0; /* the collector itself is never traced */
const volatile __u8 trace_all = 0;  /* 1: every process but TRACE_PID_EXCLUDED ones */

#include "include/sock_tuple.bpf.h" /* uses ipv6_disabled */
/* trace_pids, trace_conns, traced() and the record's fill, shared with
 * bpf/tls.bpf.c (its TLS spans) */
#include "include/trace_span.bpf.h"

#define TRACE_MAX_IOV 4

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TRACE_EVENTS_RING_BYTES);
} events SEC(".maps");

DROP_COUNTERS(drops, TRACE_DROP_MAX);

/* Copy up to TRACE_PAYLOAD_MAX - off bytes from src at payload[off]. */
static __always_inline int copy_at(struct span_scratch *s, __u32 off, const void *src, __u64 n)
{
	if (off >= TRACE_PAYLOAD_MAX || !n)
		return 0;
	if (n > TRACE_PAYLOAD_MAX - off)
		n = TRACE_PAYLOAD_MAX - off;
	/* off < MAX and n <= MAX: inside payload + slack; the masks restate it
	 * for the verifier, the barrier keeps clang from dropping them */
	__u32 o = off, len = n;
	asm volatile("" : "+r"(o), "+r"(len));
	o &= TRACE_PAYLOAD_MAX - 1;
	len &= 2 * TRACE_PAYLOAD_MAX - 1;
	if (bpf_probe_read_user(&s->ev.payload[o], len, src))
		return -1;
	return len;
}

/* bpf_loop's state for the iovecs past the first TRACE_MAX_IOV */
struct iov_loop {
	const struct iovec *iov; /* the user array, from its TRACE_MAX_IOV-th */
	__u32 n;                 /* iovecs there */
	__u32 off;               /* payload bytes so far */
	__u64 left;              /* bytes of the call not yet placed */
};

static long copy_iov_cb(__u32 i, void *ctx)
{
	struct iov_loop *l = ctx;
	__u32 zero = 0;
	struct iovec v;
	if (i >= l->n || !l->left || l->off >= TRACE_PAYLOAD_MAX)
		return 1;
	/* looked up again: a map value pointer does not survive the trip
	 * through the loop's context for the verifier */
	struct span_scratch *s = bpf_map_lookup_elem(&span_buf, &zero);
	if (!s || bpf_probe_read_user(&v, sizeof(v), &l->iov[i]))
		return 1;
	__u64 len = v.iov_len < l->left ? v.iov_len : l->left;
	l->left -= len;
	int got = copy_at(s, l->off, v.iov_base, len);
	if (got < 0) {
		count_drop(&drops, TRACE_DROP_READ);
		return 1;
	}
	l->off += got;
	return 0;
}

/* The call's first bytes (up to TRACE_PAYLOAD_MAX of the `ret` it moved)
 * into the record; with `all_iov` from up to
 * TRACE_MAX_IOV + TRACE_MAX_IOV_LOOP iovecs, else TRACE_MAX_IOV. Returns
 * the bytes copied. The first TRACE_STATUS_KEEP bytes come first: when
 * they are an HTTP/1.x status line and `trim_status` is set (the
 * connection was not seen pipelining) nothing more is kept of the message
 * (span_msg_send), so the rest is not copied (a response is most of a
 * server's and a client's message starts). */
static __always_inline __u32 copy_payload(struct span_scratch *s, long ret, int all_iov, int trim_status)
{
	struct syscall_io io = {};
	int kind = syscall_io_get(&io);
	struct iovec vs[TRACE_MAX_IOV] = {};
	int n = 1;
	if (kind == SYSIO_BUF) { /* one buffer: an iovec of its own */
		vs[0].iov_base = (void *)io.ptr;
		vs[0].iov_len = ret;
	} else if (kind == SYSIO_IOV || kind == SYSIO_MSG) {
		n = syscall_io_iovecs(&io, vs, TRACE_MAX_IOV);
		if (n <= 0)
			return 0;
	} else {
		return 0;
	}
	__u64 left = ret;
	__u64 head = vs[0].iov_len < left ? vs[0].iov_len : left;
	int got = copy_at(s, 0, vs[0].iov_base, head < TRACE_STATUS_KEEP ? head : TRACE_STATUS_KEEP);
	if (got < 0) {
		count_drop(&drops, TRACE_DROP_READ);
		return 0;
	}
	if (trim_status && got == TRACE_STATUS_KEEP && is_http1_status(s->ev.payload))
		return got;
	/* the rest from where the head ended */
	vs[0].iov_base += got;
	vs[0].iov_len -= got;
	left -= got;
	__u32 off = got;
#pragma unroll
	for (int i = 0; i < TRACE_MAX_IOV; i++) {
		if (i >= n || !left || off >= TRACE_PAYLOAD_MAX)
			break;
		__u64 len = vs[i].iov_len < left ? vs[i].iov_len : left;
		left -= len;
		got = copy_at(s, off, vs[i].iov_base, len);
		if (got < 0) {
			count_drop(&drops, TRACE_DROP_READ);
			break;
		}
		off += got;
	}
	if (all_iov && n == TRACE_MAX_IOV && left && off < TRACE_PAYLOAD_MAX) {
		/* the iovec array's place and length again (syscall_io_iovecs
		 * read at most TRACE_MAX_IOV of them) */
		struct iov_loop l = {.off = off, .left = left};
		__u64 cnt = io.count;
		const struct iovec *base = (const struct iovec *)io.ptr;
		if (kind == SYSIO_MSG) {
			struct user_msghdr m = {};
			if (bpf_probe_read_user(&m, sizeof(m), (void *)io.ptr))
				return off;
			base = m.msg_iov;
			cnt = m.msg_iovlen;
		}
		if (cnt > TRACE_MAX_IOV) {
			l.iov = base + TRACE_MAX_IOV;
			l.n = cnt - TRACE_MAX_IOV;
			bpf_loop(TRACE_MAX_IOV_LOOP, copy_iov_cb, &l, 0);
			off = l.off;
		}
	}
	return off < TRACE_PAYLOAD_MAX ? off : TRACE_PAYLOAD_MAX;
}

static __always_inline void on_call(struct sock *sk, int ret, __u8 op)
{
	if (ret <= 0)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced(id >> 32))
		return;
	if (!tcp_stream(sk))
		return;
	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	int due, start;
	struct sock_tuple t = {};
	struct span_scratch *s;
	struct trace_conn *tc = span_call_begin(sk, key, op, &due, &start, &t, &s, &drops, TRACE_DROP_CONNS);
	if (!tc)
		return;
	if (s) {
		const struct tcp_sock *tp = KERNEL_CAST(struct tcp_sock, sk);
		__u32 seq = (op == TRACE_OP_SEND ? tp->write_seq : tp->copied_seq) - (__u32)ret;
		span_msg_fill(&s->ev, tc, &t, key, id, now, seq, ret, op, span_more(tc, start));
		/* all iovecs on HTTP/2 connections, and for a message start (it
		 * may be the preface, with a request after it) */
		s->ev.cap_len = copy_payload(s, ret, tc->h2 || start, !tc->whole);
		span_h2_mark(tc, &s->ev, start);
		span_msg_send(&events, &s->ev, !tc->whole, &s->unqueried, &drops, TRACE_DROP_RING);
	}
	span_call_end(tc, op, due, start, ret, now);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(trace_send, struct sock *sk, int ret, int flags)
{
	on_call(sk, ret, TRACE_OP_SEND);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(trace_recv, struct sock *sk, int ret, int flags)
{
	if (flags & MSG_PEEK) /* the data stays queued: it is read again */
		return 0;
	on_call(sk, ret, TRACE_OP_RECV);
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(trace_destroy, struct sock *sk)
{
	__u32 zero = 0;
	struct span_scratch *s = bpf_map_lookup_elem(&span_buf, &zero);
	span_conn_close(&events, (__u64)sk, s ? &s->unqueried : 0, &drops, TRACE_DROP_RING);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(trace_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid, ctgid = child->tgid;
	if (ptgid == ctgid) /* a new thread: its process is already known */
		return 0;
	__u8 *v = bpf_map_lookup_elem(&trace_pids, &ptgid);
	if (!v)
		return 0;
	__u8 val = *v;
	if (bpf_map_update_elem(&trace_pids, &ctgid, &val, BPF_ANY))
		count_drop(&drops, TRACE_DROP_PIDS);
	return 0;
}

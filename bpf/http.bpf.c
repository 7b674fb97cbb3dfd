// SPDX-License-Identifier: GPL-2.0
/* httpflow: HTTP/1.x exchanges on TCP sockets, paired in the kernel,
 * without any syscall tracepoint (no kprobes, no fentry on this kernel).
 *
 * tp_btf/sock_send_length, tp_btf/sock_recv_length (net/socket.c,
 *     sock_sendmsg_nosec / sock_recvmsg_nosec, right after the protocol
 *     moved the data): the socket and the bytes moved. The calling task's
 *     saved registers (include/syscall_io.bpf.h) give the user buffer or
 *     iovecs of read/write/readv/writev/sendto/recvfrom/sendmsg/recvmsg:
 *     for a send the bytes are still there, for a receive already there.
 *     - on a socket not known yet, the first 8 bytes are peeked: an
 *       HTTP/1.x request or status line starts a message and the socket
 *       enters `http_conns`; anything else costs that peek and one lookup,
 *       and when it is the stream's first read the socket is marked
 *       (`not_http`): its later calls end after one lookup more;
 *     - on a known socket the first 8 bytes tell a message start, the
 *       pairing (include/http_msg.bpf.h) takes it; anything else (headers,
 *       bodies in more calls, sendfile/splice, which move no user buffer)
 *       only adds to the byte counters;
 *     - a call whose registers do not describe its buffer (io_uring,
 *       sendmmsg/recvmmsg, kernel threads, a socket call made inside
 *       another syscall) is counted as not covered; its bytes still count
 *       on a known socket.
 *     A send of HTTP_FLUSH_BYTES on an AF_UNIX socket by the collector
 *     itself runs the idle flush over `http_conns` (include/http.h).
 * tp_btf/tcp_destroy_sock: the end of a known socket: its last exchange
 *     is reported with the final counters, the entry goes.
 *
 * So user space gets one struct http_exchange per finished exchange, and
 * the reader is woken only when EVENTS_WAKE_BYTES wait.
 */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "include/drops.bpf.h"
#include "include/netflow.h"
#include "include/http.h"

char LICENSE[] SEC("license") = "GPL";

/* Ablation, for perf/bench_httpflow_e2e.py only (BENCH_ABLATE builds
 * variants of this file with -DHTTP_ABLATE=<n>, each stopping or skipping
 * one stage, to measure in one run what each stage costs); 0, the default,
 * is the product and compiles none of it:
 *   1 return at once (hooks and collector, no BPF work)
 *   2 stop after the map lookups of the socket
 *   3 stop after the syscall registers and the iovecs (bytes counted)
 *   4 read the payload and create the entry, but no pairing (bytes counted)
 *   5 pair, but write no record to the ring
 *   6 no header scan for pipelined requests
 *   7 no copy of the request's head
 * (the default is in include/http_msg.bpf.h, which tls.bpf.c shares) */

/* knobs, set by user space between open and load */
const volatile __u8 ipv6_disabled = 0;
const volatile __u32 self_tgid = 0;          /* the collector's own traffic is skipped */
const volatile __u64 settle_ns = 1000000000; /* the idle flush reports responses quiet this long */

#include "include/sock_tuple.bpf.h" /* uses ipv6_disabled */
#include "include/syscall_io.bpf.h"
#include "include/ring_wake.bpf.h"
#include "include/http_msg.bpf.h"

#define HTTP_MAX_IOV 8

#ifndef EVENTS_RING_BYTES /* a -D of perf/bench_httpflow_e2e.py's variants */
#define EVENTS_RING_BYTES (1 << 24)
#endif
/* Wake the reader only once this much waits: it drains in batches; a
 * wakeup per record would cost a context switch and a pass of the agent's
 * loop per exchange. */
#define EVENTS_WAKE_BYTES (EVENTS_RING_BYTES / 16)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
} events SEC(".maps");

/* By struct sock *. Not preallocated (an entry is ~0.75 KB, only sockets
 * that carried HTTP have one); removed at tcp_destroy_sock; full: counted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct http_conn);
} http_conns SEC(".maps");

DROP_COUNTERS(http_drops, HTTP_DROP_MAX);
HTTP_OVERFLOW_HEADS(http_heads)

/* Sockets whose stream did not start with an HTTP message: their first
 * received bytes (the first read of the connection, told by the socket's
 * own counters) were something else (TLS, Redis, PostgreSQL, ...). Their
 * later calls end at this lookup, before the registers and the payload
 * peek. Freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} not_http SEC(".maps");

struct scratch {
	struct http_scratch h;
	struct http_conn init; /* a new entry, too big for the stack */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_buf SEC(".maps");

#define HTTP_OUT(sc) {.ring = &events, .drops = &http_drops, .heads = &http_heads, .unqueried = &(sc)->h.unqueried, \
		      .wake_bytes = EVENTS_WAKE_BYTES, .source = HTTP_SRC_SYSCALL}

/* Append the bytes of iovecs 1.. (the first is in buf already, `off`
 * bytes of it) up to HTTP_SCAN_MAX; `left` of the call's bytes are in
 * them. Returns the bytes in buf. */
static __always_inline __u32 copy_rest(struct http_scratch *s, const struct iovec *vs, int iovcnt, __u32 off, __u64 left)
{
#pragma unroll
	for (int i = 1; i < HTTP_MAX_IOV; i++) {
		if (i >= iovcnt || !left || off >= HTTP_SCAN_MAX)
			break;
		__u64 n = vs[i].iov_len < left ? vs[i].iov_len : left;
		left -= n;
		if (n > HTTP_SCAN_MAX - off)
			n = HTTP_SCAN_MAX - off;
		if (!n)
			continue;
		/* off < HTTP_SCAN_MAX and off + n <= HTTP_SCAN_MAX; the masks
		 * restate a bound for the verifier (which checks the whole
		 * scratch value), the barriers keep clang from dropping them */
		__u32 o = off, len = n;
		asm volatile("" : "+r"(o), "+r"(len));
		o &= HTTP_SCAN_MAX - 1;
		len &= HTTP_SCAN_MAX - 1;
		if (bpf_probe_read_user(&s->buf[o], len, vs[i].iov_base))
			break;
		off += n;
	}
	return off < HTTP_SCAN_MAX ? off : HTTP_SCAN_MAX;
}

HTTP_IDLE_FLUSH(http_conns, scratch_buf, scratch, HTTP_OUT)

/* Is this receive of `ret` bytes the first read of the TCP stream? What
 * the owner has read so far is what arrived (bytes_received, which counts
 * rcv_nxt's moves) less what still waits (rcv_nxt - copied_seq). A
 * connection that was under way before we loaded is never marked: its
 * next message start is seen as before. */
static __always_inline int first_read(struct sock *sk, int ret)
{
	const struct tcp_sock *tp = KERNEL_CAST(struct tcp_sock, sk);
	__u32 unread = tp->rcv_nxt - tp->copied_seq;
	return tp->bytes_received - unread == (__u64)ret;
}

static __always_inline int on_io(struct sock *sk, int ret, int flags, __u8 op)
{
	if (ret <= 0 || HTTP_ABLATE == 1)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u16 fam = sk->__sk_common.skc_family;
	if (self_tgid && (id >> 32) == self_tgid) {
		if (op == HTTP_OP_SEND)
			http_idle_flush(sk, ret);
		return 0;
	}
	if (sk->sk_protocol != IPPROTO_TCP || sk->sk_type != SOCK_STREAM)
		return 0;
	if (fam != AF_INET && (fam != AF_INET6 || ipv6_disabled))
		return 0;
	if (op == HTTP_OP_RECV && (flags & MSG_PEEK)) /* the data stays queued: read again later */
		return 0;
	__u64 key = (__u64)sk;
	struct http_conn *hc = bpf_map_lookup_elem(&http_conns, &key);
	if (!hc && bpf_sk_storage_get(&not_http, sk, 0, 0))
		return 0;
	if (HTTP_ABLATE == 2)
		return 0;
	/* the clock only where it is used: a known socket's counters, or a
	 * message start below (most calls on other sockets end before it) */
	__u64 ts = hc ? bpf_ktime_get_ns() : 0;
	struct syscall_io io = {};
	int kind = syscall_io_get(&io);
	if (kind != SYSIO_BUF && kind != SYSIO_IOV && kind != SYSIO_MSG) {
		if (kind == SYSIO_NONE)
			count_drop(&http_drops, HTTP_DROP_NOT_COVERED);
		if (hc) /* sendfile/splice bodies: bytes only */
			http_count(hc, op, ret, ts);
		return 0;
	}
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch_buf, &zero);
	if (!sc)
		return 0;
	struct http_scratch *s = &sc->h;

	struct iovec vs[HTTP_MAX_IOV] = {};
	int iovcnt = syscall_io_iovecs(&io, vs, HTTP_MAX_IOV);
	if (HTTP_ABLATE == 3)
		goto not_a_start;
	void *first = (void *)io.ptr;
	__u64 len0 = ret;
	if (iovcnt == SYSIO_IOV_NONE) {
		first = 0;
	} else if (iovcnt) {
		first = vs[0].iov_base;
		len0 = vs[0].iov_len < (__u64)ret ? vs[0].iov_len : (__u64)ret;
	}
	/* 8 bytes tell a message start; everything else is a continuation. On
	 * a known socket most calls start a message: the first buffer's bytes
	 * are read at once there (one helper call less per message). */
	__u32 n0 = len0 < HTTP_SCAN_MAX ? len0 : HTTP_SCAN_MAX;
	__u32 got = hc ? n0 : 8;
	if (!first || len0 < 8 || bpf_probe_read_user(s->buf, got & (2 * HTTP_SCAN_MAX - 1), first))
		goto not_a_start;
	if (!looks_like_http(s->buf)) {
		/* a stream that starts otherwise is not HTTP/1.x (the other end's
		 * first bytes, from a request's client, are a status line) */
		if (!hc && op == HTTP_OP_RECV && first_read(sk, ret)) {
			__u8 *mark = bpf_sk_storage_get(&not_http, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
			if (mark)
				*mark = 1;
		}
		goto not_a_start;
	}
	/* A message starts, if the registers describe this socket's call. Asked
	 * (one fd table walk, ~150 ns) only before a socket's first message:
	 * the calls the kernel makes inside another syscall go to its own
	 * sockets (NFS, iSCSI: no fd, so never an entry), and the other
	 * syscalls that move a user socket's bytes (sendfile, splice,
	 * io_uring) are told by their number above. */
	if (!hc && !syscall_io_fd_is(&io, sk)) {
		count_drop(&http_drops, HTTP_DROP_NOT_COVERED);
		return 0;
	}
	if (got < n0 && bpf_probe_read_user(s->buf, n0 & (2 * HTTP_SCAN_MAX - 1), first)) {
		count_drop(&http_drops, HTTP_DROP_READ);
		if (hc)
			http_count(hc, op, ret, ts);
		return 0;
	}
	/* The iovecs after the first matter for requests (pipelined ones may
	 * follow) and for a response only when another response may follow
	 * in this call (http_messages: more requests wait, or an interim one
	 * is under way); a server's writev of head and body then costs one
	 * read, not two. The status line must be whole in the first buffer. */
	__u32 cap = n0;
	if (!is_response(s->buf) || n0 < 12 || (hc && (hc->tail - hc->head > 1 || hc->state == HTTP_RESP_INTERIM)) ||
	    s->buf[9] == '1')
		cap = copy_rest(s, vs, iovcnt, n0, ret - len0);
	struct http_out o = HTTP_OUT(sc);
	if (!hc) {
		ts = bpf_ktime_get_ns();
		hc = http_conn_new(&http_conns, &http_drops, key, !is_response(s->buf), op, id >> 32, &sc->init);
		if (!hc)
			return 0;
	}
	if (HTTP_ABLATE == 4)
		goto not_a_start;
	http_messages(hc, key, s, cap, op, ret, ts, (__u32)id, &o);
	return 0;
not_a_start:
	if (hc)
		http_count(hc, op, ret, ts);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(http_send, struct sock *sk, int ret, int flags)
{
	return on_io(sk, ret, flags, HTTP_OP_SEND);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(http_recv, struct sock *sk, int ret, int flags)
{
	return on_io(sk, ret, flags, HTTP_OP_RECV);
}

/* The end of a TCP socket (fires once, after the owner's last read; see
 * netflow.bpf.c): its last exchange is complete. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(http_destroy, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct http_conn *hc = bpf_map_lookup_elem(&http_conns, &key);
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch_buf, &zero);
	if (!hc || !sc)
		return 0;
	struct http_out o = HTTP_OUT(sc);
	http_close(hc, key, &o);
	bpf_map_delete_elem(&http_conns, &key);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/* httpflow: HTTP/1.x message starts on TCP sockets, from syscall
 * tracepoints only (no kprobes, no fentry on this kernel).
 *
 * sys_enter_{read,write,readv,writev,sendto,recvfrom,sendmsg,recvmsg}:
 *     resolve fd -> struct file -> struct socket -> struct sock through the
 *     task's file table (plain loads via bpf_rdonly_cast); a call on
 *     anything but an IPv4/IPv6 TCP socket is dropped right there (nothing
 *     is stored for files and pipes). The user buffer (and a send's entry
 *     time) go to the task's storage (`calls`).
 * sys_exit_*: with the return value (bytes moved) copy the first buffer's
 *   bytes (up to L7_PAYLOAD_MAX) into the record under construction and
 *   look at the first 8:
 *   - an HTTP/1.x request line ("GET ", "POST", ...) or status line
 *     ("HTTP/1.") starts a message: the socket enters the `http_conns` LRU
 *     map and one struct l7_event with the payload prefix (up to
 *     L7_PAYLOAD_MAX bytes, across up to HTTP_MAX_IOV iovecs) goes to the
 *     `events` ring, with the connection's byte counters before the call;
 *   - anything else on a socket in `http_conns` is a continuation (headers
 *     or body in more calls): only its bytes are added to the counters, no
 *     record;
 *   - anything else on another socket costs that copy and one map lookup,
 *     nothing more.
 * sys_{enter,exit}_{sendfile64,splice}: bytes only (a file body sent with
 *     sendfile, as nginx does), added to the counters of a known socket.
 * tp_btf/tcp_destroy_sock: the end of a known socket: an L7_OP_CLOSE record
 *     with the final counters closes the last response in user space.
 *
 * So user space gets one record per message start (plus one per closed
 * HTTP connection) and computes a message's size as the difference of the
 * counters between its start and the next message start of the same kind.
 * Records end after their valid payload bytes (L7_EVENT_MIN_SIZE +
 * cap_len), and the reader is woken only when EVENTS_WAKE_BYTES wait: both
 * matter at tens of thousands of requests per second.
 */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "include/drops.bpf.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "include/netflow.h"
#include "include/l7.h"
#include "include/http.h"
#include "include/http_msg.bpf.h"
#include "include/ring_wake.bpf.h"

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define HTTP_MAX_IOV 8

char LICENSE[] SEC("license") = "GPL";

/* knobs, set by user space between open and load */
const volatile __u8 ipv6_disabled = 0;
const volatile __u32 self_tgid = 0; /* the collector's own traffic is skipped */

#include "include/sock_tuple.bpf.h" /* uses ipv6_disabled */

#define EVENTS_RING_BYTES (1 << 25)
/* Wake the reader only once this much waits: user space processes records
 * once per interval anyway (and takes what waits then), so a wakeup per
 * record (the default) would only cost a context switch and a pass of the
 * agent's loop per HTTP message, which at 100k messages/s is more than the
 * reader can take. */
#define EVENTS_WAKE_BYTES (EVENTS_RING_BYTES / 16)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct http_conn);
} http_conns SEC(".maps");

DROP_COUNTERS(http_drops, HTTP_DROP_MAX);

/* how a call passes its data */
#define CALL_BUF 0   /* (buf, len) */
#define CALL_IOV 1   /* (struct iovec *, iovcnt) */
#define CALL_MSG 2   /* struct user_msghdr * */
#define CALL_BYTES 3 /* sendfile/splice: bytes only */

/* a socket call between its enter and exit, in the calling task's storage */
struct sock_call {
	__u64 sk;    /* 0: no call under way */
	__u64 ptr;   /* buf, iovec array or msghdr (user pointers) */
	__u64 ts;    /* entry time (sends only: a receive is timed at its exit) */
	__u32 count; /* iovcnt */
	__u8 op;     /* L7_OP_SEND / L7_OP_RECV */
	__u8 kind;   /* CALL_* */
	__u16 _pad;
};

/* Task-local storage, not a hash keyed by tid: the entry lives in the task
 * (found through task->bpf_storage's cache, no hashing, no lock, no
 * element allocation per call) and goes away with the task; a hash map
 * update + lookup + delete per socket call cost ~3x more (measured with
 * perf/bench_bpf_cost.py). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_call);
} calls SEC(".maps");

/* The record under construction, with room after the payload so that a
 * copy starting anywhere below L7_PAYLOAD_MAX with a length up to
 * L7_PAYLOAD_MAX stays inside (the verifier cannot relate offset and
 * length; the slack makes every such copy provably in bounds). */
struct scratch {
	struct l7_event ev;
	__u8 slack[L7_PAYLOAD_MAX];
	__u32 unqueried; /* include/ring_wake.bpf.h */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_buf SEC(".maps");

static __always_inline __u64 wake_flag(struct scratch *s, __u32 size)
{
	return ring_wake_flag(&events, &s->unqueried, size, EVENTS_WAKE_BYTES);
}

/* A record ends after its valid payload bytes (l7.h: L7_EVENT_MIN_SIZE):
 * a typical request or status line with its headers is a fraction of
 * L7_PAYLOAD_MAX, so the ring holds several times more records. */
static __always_inline void emit(struct scratch *s)
{
	/* cap_len <= L7_PAYLOAD_MAX; the mask is for the verifier: the source
	 * is the scratch record, which has L7_PAYLOAD_MAX bytes of slack */
	__u32 size = L7_EVENT_MIN_SIZE + (s->ev.cap_len & (2 * L7_PAYLOAD_MAX - 1));
	if (bpf_ringbuf_output(&events, &s->ev, size, wake_flag(s, size)))
		count_drop(&http_drops, HTTP_DROP_RING);
}

/* fd of the current task -> its TCP sock, or NULL. The inode mode tells a
 * socket (S_IFSOCK, set by sock_alloc in net/socket.c); for a socket file
 * private_data is the struct socket (sock_alloc_file). The walk uses plain
 * loads through bpf_rdonly_cast (sock_tuple.bpf.h) but for the fd array slot,
 * which takes a variable index (one bpf_probe_read_kernel). */
static __always_inline struct sock *fd_tcp_sock(int fd)
{
	if (fd < 0)
		return 0;
	struct task_struct *task = KERNEL_CAST(struct task_struct, bpf_get_current_task());
	struct fdtable *fdt = task->files->fdt;
	if (!fdt || (unsigned int)fd >= fdt->max_fds)
		return 0;
	struct file **fds = fdt->fd;
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	f = KERNEL_CAST(struct file, f);
	if ((f->f_inode->i_mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *sock = KERNEL_CAST(struct socket, f->private_data);
	struct sock *sk = sock->sk;
	if (!sk || sk->sk_protocol != IPPROTO_TCP || sk->sk_type != SOCK_STREAM)
		return 0;
	__u16 fam = sk->__sk_common.skc_family;
	if (fam != AF_INET && (fam != AF_INET6 || ipv6_disabled))
		return 0;
	return sk;
}

static __always_inline int enter_call(int fd, __u64 ptr, __u32 count, __u8 op, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (self_tgid && (id >> 32) == self_tgid)
		return 0;
	struct sock *sk = fd_tcp_sock(fd);
	if (!sk)
		return 0;
	struct sock_call *c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0,
						   BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c) {
		count_drop(&http_drops, HTTP_DROP_CALLS);
		return 0;
	}
	c->sk = (__u64)sk;
	c->ptr = ptr;
	c->ts = op == L7_OP_SEND ? bpf_ktime_get_ns() : 0;
	c->count = count;
	c->op = op;
	c->kind = kind;
	return 0;
}

/* The user iovecs of a call, read once (up to HTTP_MAX_IOV) into `vs`:
 * both the 8-byte peek and the payload copy use them, where reading each
 * iovec from user memory again per use cost a bpf_probe_read_user each.
 * Returns how many were read (0 for a plain buffer), IOV_NO_MSG when the
 * msghdr is unreadable (the call is dropped, as before), IOV_NONE when no
 * iovec is (its bytes still count as a continuation). */
#define IOV_NO_MSG (-1)
#define IOV_NONE (-2)
static __always_inline int call_iovecs(const struct sock_call *c, struct iovec *vs)
{
	struct iovec *iov = 0;
	__u32 iovcnt = 0;
	if (c->kind == CALL_IOV) {
		iov = (struct iovec *)c->ptr;
		iovcnt = c->count;
	} else if (c->kind == CALL_MSG) {
		struct user_msghdr m = {};
		if (bpf_probe_read_user(&m, sizeof(m), (void *)c->ptr))
			return IOV_NO_MSG;
		iov = m.msg_iov;
		iovcnt = (__u32)m.msg_iovlen;
	} else {
		return 0;
	}
	if (!iovcnt)
		return IOV_NONE;
	if (iovcnt > HTTP_MAX_IOV)
		iovcnt = HTTP_MAX_IOV;
	/* the barrier keeps clang from checking the bound on another copy of
	 * the size than the one passed (the verifier needs it on that one) */
	__u64 size = (__u64)iovcnt * sizeof(*vs);
	asm volatile("" : "+r"(size));
	if (size > HTTP_MAX_IOV * sizeof(*vs) || bpf_probe_read_user(vs, size, iov))
		return IOV_NONE;
	return iovcnt;
}

/* Append the bytes of iovecs 1.. (the first one is already in the payload,
 * `off` bytes of it) up to L7_PAYLOAD_MAX; `left` of the call's bytes are
 * in them. Returns the payload length. */
static __always_inline __u32 copy_rest(struct scratch *s, const struct iovec *vs, int iovcnt, __u32 off, __u64 left)
{
#pragma unroll
	for (int i = 1; i < HTTP_MAX_IOV; i++) {
		if (i >= iovcnt || !left || off >= L7_PAYLOAD_MAX)
			break;
		__u64 n = vs[i].iov_len < left ? vs[i].iov_len : left;
		left -= n;
		if (n > L7_PAYLOAD_MAX)
			n = L7_PAYLOAD_MAX;
		if (!n)
			continue;
		/* off < L7_PAYLOAD_MAX, n <= L7_PAYLOAD_MAX: inside payload + slack.
		 * The masks restate that for the verifier; the barriers keep
		 * clang from dropping them as redundant. */
		__u32 o = off, len = n;
		asm volatile("" : "+r"(o), "+r"(len));
		o &= L7_PAYLOAD_MAX - 1;
		len &= 2 * L7_PAYLOAD_MAX - 1;
		if (bpf_probe_read_user(&s->ev.payload[o], len, vs[i].iov_base))
			break;
		off += n;
	}
	return off < L7_PAYLOAD_MAX ? off : L7_PAYLOAD_MAX;
}

/* A socket's first message start: its entry in http_conns, with the tuple
 * and the process name read once. NULL when not reportable or no room. */
static __always_inline struct http_conn *new_conn(__u64 skp, const __u8 *head, __u8 op, __u32 tgid)
{
	struct sock_tuple t = {};
	if (!read_tuple((struct sock *)skp, &t))
		return 0;
	struct http_conn init = {.pid = tgid, .family = t.family, .proto = t.proto,
				 .lport = t.lport, .rport = t.rport};
	__builtin_memcpy(init.laddr, t.laddr, 16);
	__builtin_memcpy(init.raddr, t.raddr, 16);
	/* the side that sends the first request is the client */
	int is_request = head[0] != 'H' || head[1] != 'T';
	init.direction = (is_request == (op == L7_OP_SEND)) ? NF_DIR_OUTGOING : NF_DIR_INCOMING;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	BPF_CORE_READ_STR_INTO(&init.comm, task, group_leader, comm);
	if (bpf_map_update_elem(&http_conns, &skp, &init, BPF_NOEXIST) && !bpf_map_lookup_elem(&http_conns, &skp)) {
		count_drop(&http_drops, HTTP_DROP_CONNS);
		return 0;
	}
	struct http_conn *hc = bpf_map_lookup_elem(&http_conns, &skp);
	if (!hc)
		count_drop(&http_drops, HTTP_DROP_CONNS);
	return hc;
}

/* Everything but the payload, from the connection entry and the call. */
static __always_inline void fill_event(struct l7_event *ev, const struct http_conn *hc, const struct sock_call *c,
				       __u64 id, long ret, __u64 ts)
{
	ev->ts_ns = ts;
	ev->sk = c->sk;
	__builtin_memcpy(ev->laddr, hc->laddr, 16);
	__builtin_memcpy(ev->raddr, hc->raddr, 16);
	ev->lport = hc->lport;
	ev->rport = hc->rport;
	ev->pid = id >> 32;
	ev->tid = (__u32)id;
	ev->bytes = ret;
	ev->family = hc->family;
	ev->proto = hc->proto;
	ev->op = c->op;
	ev->source = L7_SRC_SYSCALL;
	ev->direction = hc->direction;
	ev->flags = L7_F_COUNTED;
	__builtin_memcpy(ev->comm, hc->comm, NF_COMM_LEN);
	ev->sk_sent = hc->sent;
	ev->sk_recv = hc->recv;
	ev->ts_other_ns = c->op == L7_OP_SEND ? hc->ts_last_recv : hc->ts_last_send;
}

static __always_inline int exit_call(long ret)
{
	struct sock_call *cp = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0, 0);
	if (!cp || !cp->sk)
		return 0;
	struct sock_call c = *cp;
	cp->sk = 0; /* the call is over */
	if (ret <= 0)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	/* a send is timed at its entry, a receive when the data is there */
	__u64 ts = c.op == L7_OP_SEND ? c.ts : bpf_ktime_get_ns();
	struct http_conn *hc = bpf_map_lookup_elem(&http_conns, &c.sk);
	if (c.kind == CALL_BYTES) {
		if (hc)
			count_bytes(hc, c.op, ret, ts);
		return 0;
	}

	struct iovec vs[HTTP_MAX_IOV] = {};
	int iovcnt = call_iovecs(&c, vs);
	if (iovcnt == IOV_NO_MSG)
		return 0;
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_buf, &zero);
	if (!s)
		return 0;
	/* The first buffer's bytes (up to L7_PAYLOAD_MAX) go straight into the
	 * record's payload: its first 8 bytes tell a message start, and for a
	 * start they need not be read again (one bpf_probe_read_user less per
	 * message; a continuation copies up to L7_PAYLOAD_MAX instead of 8
	 * bytes, which costs little more: the call's fixed cost dominates). */
	void *first = (void *)c.ptr;
	__u64 len0 = ret;
	if (iovcnt == IOV_NONE) {
		first = 0;
	} else if (iovcnt) {
		first = vs[0].iov_base;
		len0 = vs[0].iov_len < (__u64)ret ? vs[0].iov_len : (__u64)ret;
	}
	__u32 n0 = len0 < L7_PAYLOAD_MAX ? len0 : L7_PAYLOAD_MAX;
	int unread = 0;
	if (first && n0 >= 8) {
		unread = bpf_probe_read_user(s->ev.payload, n0 & (2 * L7_PAYLOAD_MAX - 1), first) != 0;
		if (unread)
			count_drop(&http_drops, HTTP_DROP_READ);
	}
	if (!first || n0 < 8 || unread || !looks_like_http(s->ev.payload)) {
		if (hc) /* a continuation: counted, no record */
			count_bytes(hc, c.op, ret, ts);
		return 0;
	}

	/* a message starts */
	if (!hc) {
		hc = new_conn(c.sk, s->ev.payload, c.op, id >> 32);
		if (!hc)
			return 0;
	}
	struct l7_event *ev = &s->ev;
	ev->cap_len = copy_rest(s, vs, iovcnt, n0, ret - len0);
	fill_event(ev, hc, &c, id, ret, ts);
	count_bytes(hc, c.op, ret, ts);
	emit(s);
	return 0;
}

/* read(fd, buf, count) / write(fd, buf, count) */
SEC("tracepoint/syscalls/sys_enter_read")
int enter_read(struct trace_event_raw_sys_enter *ctx)
{
	return enter_call(ctx->args[0], ctx->args[1], 0, L7_OP_RECV, CALL_BUF);
}
SEC("tracepoint/syscalls/sys_exit_read")
int exit_read(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

SEC("tracepoint/syscalls/sys_enter_write")
int enter_write(struct trace_event_raw_sys_enter *ctx)
{
	return enter_call(ctx->args[0], ctx->args[1], 0, L7_OP_SEND, CALL_BUF);
}
SEC("tracepoint/syscalls/sys_exit_write")
int exit_write(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

/* readv/writev(fd, iov, iovcnt) */
SEC("tracepoint/syscalls/sys_enter_readv")
int enter_readv(struct trace_event_raw_sys_enter *ctx)
{
	return enter_call(ctx->args[0], ctx->args[1], ctx->args[2], L7_OP_RECV, CALL_IOV);
}
SEC("tracepoint/syscalls/sys_exit_readv")
int exit_readv(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

SEC("tracepoint/syscalls/sys_enter_writev")
int enter_writev(struct trace_event_raw_sys_enter *ctx)
{
	return enter_call(ctx->args[0], ctx->args[1], ctx->args[2], L7_OP_SEND, CALL_IOV);
}
SEC("tracepoint/syscalls/sys_exit_writev")
int exit_writev(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

/* sendto(fd, buf, len, flags, addr, addrlen) / recvfrom(same) */
SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	return enter_call(ctx->args[0], ctx->args[1], 0, L7_OP_SEND, CALL_BUF);
}
SEC("tracepoint/syscalls/sys_exit_sendto")
int exit_sendto(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[3] & MSG_PEEK) /* the data stays queued: read again later */
		return 0;
	return enter_call(ctx->args[0], ctx->args[1], 0, L7_OP_RECV, CALL_BUF);
}
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int exit_recvfrom(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

/* sendmsg/recvmsg(fd, msg, flags) */
SEC("tracepoint/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	return enter_call(ctx->args[0], ctx->args[1], 0, L7_OP_SEND, CALL_MSG);
}
SEC("tracepoint/syscalls/sys_exit_sendmsg")
int exit_sendmsg(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[2] & MSG_PEEK)
		return 0;
	return enter_call(ctx->args[0], ctx->args[1], 0, L7_OP_RECV, CALL_MSG);
}
SEC("tracepoint/syscalls/sys_exit_recvmsg")
int exit_recvmsg(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

/* sendfile64(out_fd, in_fd, offset, count): bytes to a socket */
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int enter_sendfile(struct trace_event_raw_sys_enter *ctx)
{
	return enter_call(ctx->args[0], 0, 0, L7_OP_SEND, CALL_BYTES);
}
SEC("tracepoint/syscalls/sys_exit_sendfile64")
int exit_sendfile(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

/* splice(fd_in, off_in, fd_out, off_out, len, flags): a socket on either end */
SEC("tracepoint/syscalls/sys_enter_splice")
int enter_splice(struct trace_event_raw_sys_enter *ctx)
{
	if (fd_tcp_sock(ctx->args[2]))
		return enter_call(ctx->args[2], 0, 0, L7_OP_SEND, CALL_BYTES);
	return enter_call(ctx->args[0], 0, 0, L7_OP_RECV, CALL_BYTES);
}
SEC("tracepoint/syscalls/sys_exit_splice")
int exit_splice(struct trace_event_raw_sys_exit *ctx) { return exit_call(ctx->ret); }

/* The end of a TCP socket (fires once, after the owner's last read; see
 * netflow.bpf.c): final counters of an HTTP connection. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct http_conn *hc = bpf_map_lookup_elem(&http_conns, &key);
	if (!hc)
		return 0;
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_buf, &zero);
	struct l7_event *ev = s ? bpf_ringbuf_reserve(&events, L7_EVENT_MIN_SIZE, 0) : 0;
	if (ev) {
		/* softirq context possibly: the tuple and owner come from the
		 * entry (the local port is already released here) */
		struct sock_call c = {.sk = key, .op = L7_OP_CLOSE};
		fill_event(ev, hc, &c, (__u64)hc->pid << 32, 0, bpf_ktime_get_ns());
		ev->cap_len = 0;
		ev->ts_other_ns = 0;
		bpf_ringbuf_submit(ev, wake_flag(s, L7_EVENT_MIN_SIZE));
	} else {
		count_drop(&http_drops, HTTP_DROP_RING);
	}
	bpf_map_delete_elem(&http_conns, &key);
	return 0;
}

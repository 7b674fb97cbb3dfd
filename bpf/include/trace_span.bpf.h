/* ebpf-trace's message starts, shared by the two programs that write them
 * (BPF side only): bpf/trace.bpf.c for plaintext socket calls and
 * bpf/tls.bpf.c (trace_spans set) for the plaintext of OpenSSL calls. Both
 * objects hold the same maps (user space loads trace.bpf.o first and hands
 * its trace_pids, trace_conns, trace_flags and events to tls.bpf.o: BpfSkeleton.start's
 * reuse), so one process list, one connection table and one ring serve
 * both, and each record is filled here, the same way for both.
 *
 * The including program defines first: the knobs `self_tgid` and
 * `trace_all`, and includes sock_tuple.bpf.h. */
#ifndef DKEBPF_TRACE_SPAN_BPF_H
#define DKEBPF_TRACE_SPAN_BPF_H

#include "trace.h"
#include "drops.bpf.h"
#include "ring_wake.bpf.h"
#include "h2frame.h"

/* the ring's declared size; user space sets the real one (bpf_objects.TRACE) */
#define TRACE_EVENTS_RING_BYTES (1 << 24)
/* user space takes records once per interval: wake it only when this much
 * waits (include/ring_wake.bpf.h); set by user space from the ring's real
 * size (bpf_objects.TRACE_WAKE_BYTES) */
const volatile __u32 trace_wake_bytes = 1 << 20;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);  /* tgid */
	__type(value, __u8); /* TRACE_PID_* */
} trace_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct sock *, | TLS_SK_TAG for the plaintext of its TLS */
	__type(value, struct trace_conn);
} trace_conns SEC(".maps");

/* User space's flags of a connection (include/trace.h: struct
 * trace_flags), apart from trace_conns so that user space never writes
 * the kernel's entries. Few entries (the connections given up on or
 * pipelining): allocated on demand. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64); /* trace_conns' key */
	__type(value, struct trace_flags);
} trace_flags SEC(".maps");

/* The record under construction (per CPU), with slack after the payload
 * so that any copy starting below TRACE_PAYLOAD_MAX of at most
 * TRACE_PAYLOAD_MAX bytes stays inside (what the verifier can prove). */
struct span_scratch {
	struct span_msg ev;
	__u8 slack[TRACE_PAYLOAD_MAX];
	__u32 unqueried; /* include/ring_wake.bpf.h */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct span_scratch);
} span_buf SEC(".maps");

/* A TCP stream socket (what ebpf-trace follows)? */
static __always_inline int tcp_stream(const struct sock *sk)
{
	const struct sock *s = KERNEL_CAST(struct sock, sk);
	return s->sk_protocol == IPPROTO_TCP && s->sk_type == SOCK_STREAM;
}

/* Is this process traced (trace_pids, trace_all)? */
static __always_inline int traced(__u32 tgid)
{
	if (tgid == self_tgid)
		return 0;
	__u8 *v = bpf_map_lookup_elem(&trace_pids, &tgid);
	if (trace_all)
		return !v || *v != TRACE_PID_EXCLUDED;
	return v && *v == TRACE_PID_TRACED;
}

/* The connection's entry in trace_conns, made when absent (NULL, counted
 * at drop_idx, when the map cannot take it). */
static __always_inline struct trace_conn *trace_conn_get(__u64 key, void *drops,
							 __u32 drop_idx)
{
	struct trace_conn *tc = bpf_map_lookup_elem(&trace_conns, &key);
	if (tc)
		return tc;
	struct trace_conn init = {.born = bpf_ktime_get_ns()};
	/* a miss of BPF_NOEXIST is another CPU that made it meanwhile */
	bpf_map_update_elem(&trace_conns, &key, &init, BPF_NOEXIST);
	tc = bpf_map_lookup_elem(&trace_conns, &key);
	if (!tc)
		count_drop(drops, drop_idx);
	return tc;
}

/* At a message start: user space's flags of the connection (trace_flags)
 * into its entry, once they are there (one lookup per message start, none
 * once the connection is ignored: nothing more can change for it). A flag
 * whose `born` is not this entry's was written for an earlier socket at
 * this address (it closed between user space's look at trace_conns and
 * its write): it goes, unapplied. */
static __always_inline void span_flags_apply(__u64 key, struct trace_conn *tc)
{
	if (tc->ignored)
		return;
	struct trace_flags *f = bpf_map_lookup_elem(&trace_flags, &key);
	if (!f)
		return;
	if (f->born != tc->born) {
		bpf_map_delete_elem(&trace_flags, &key);
		return;
	}
	__u32 bits = f->bits;
	if (bits & TRACE_FLAG_IGNORED)
		tc->ignored = 1;
	if (bits & TRACE_FLAG_WHOLE)
		tc->whole = 1;
}

/* A call in direction op on the connection tc: does it start a message
 * (*start: it begins a run of calls in op), or carry on the short start of
 * one (include/trace.h: span_msg.more), on a connection user space did not
 * give up on? Then a record is due, and span_run_next() after it. */
static __always_inline int span_due(const struct trace_conn *tc, __u8 op, int *start)
{
	*start = tc->last_op != op;
	/* on an HTTP/2 connection every call (frames of many streams
	 * interleave); on one that pipelines (trace_conn.whole) too: the
	 * messages of a run written call by call continue its start's payload */
	return (*start || tc->short_start || tc->h2 || tc->whole) && !tc->ignored;
}

/* span_msg.more of a due record (include/trace.h) */
static __always_inline __u8 span_more(const struct trace_conn *tc, int start)
{
	return start ? 0 : tc->h2 ? TRACE_MORE_H2_CALL : TRACE_MORE_SHORT;
}

static __always_inline void span_run_next(struct trace_conn *tc, __u8 op, int start, __u32 bytes)
{
	tc->last_op = op;
	tc->short_start = start && bytes < TRACE_SHORT_START;
}

/* A call that moved `bytes` in direction op: the connection's counters. */
static __always_inline void trace_conn_count(struct trace_conn *tc, __u8 op, __u32 bytes, __u64 now)
{
	if (op == TRACE_OP_SEND) {
		__sync_fetch_and_add(&tc->sent, bytes);
		tc->ts_last_send = now;
	} else {
		__sync_fetch_and_add(&tc->recv, bytes);
		tc->ts_last_recv = now;
	}
}

/* The head of a call's handling, the same for a socket call (trace.bpf.c)
 * and an SSL call (tls.bpf.c): the connection's entry under key (made when
 * absent: trace_conn_get; NULL: stop, counted at
 * conns_drop), whether a record is due
 * (*due, *start: span_due), and when one is, the per-CPU record with the
 * tuple read (*s; NULL when it could not be had). After the record:
 * span_call_end(). */
static __always_inline struct trace_conn *span_call_begin(struct sock *sk, __u64 key, __u8 op,
							  int *due, int *start, struct sock_tuple *t,
							  struct span_scratch **s, void *drops, __u32 conns_drop)
{
	*s = 0;
	struct trace_conn *tc = trace_conn_get(key, drops, conns_drop);
	if (!tc)
		return 0;
	if (tc->last_op != op) /* a message start (span_due) */
		span_flags_apply(key, tc);
	*due = span_due(tc, op, start);
	if (*due) {
		__u32 zero = 0;
		struct span_scratch *sc = bpf_map_lookup_elem(&span_buf, &zero);
		if (sc && read_tuple(sk, t))
			*s = sc;
	}
	return tc;
}

static __always_inline void span_call_end(struct trace_conn *tc, __u8 op, int due, int start, __u32 bytes,
					  __u64 now)
{
	if (due)
		span_run_next(tc, op, start, bytes);
	trace_conn_count(tc, op, bytes, now);
}

/* Does the payload start with an HTTP/1.x status line ("HTTP/1.")? */
static __always_inline int is_http1_status(const __u8 *p)
{
	return p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/' && p[5] == '1' && p[6] == '.';
}

/* Does the payload start with the HTTP/2 client connection preface? */
static __always_inline int is_h2_preface(const __u8 *p)
{
	return p[0] == 'P' && p[1] == 'R' && p[2] == 'I' && p[3] == ' ' && p[4] == '*' && p[5] == ' ' &&
	       p[6] == 'H' && p[7] == 'T' && p[8] == 'T' && p[9] == 'P' && p[10] == '/' && p[11] == '2';
}

/* A message start (payload copied, cap_len and bytes set) of a connection
 * not flagged HTTP/2 yet flags it (every call is sent from now on) when it
 * is the HTTP/2 client preface (both ends see the preface first; over TLS,
 * the first plaintext of the connection), or, on a connection older than
 * the tracing, when the whole call is HTTP/2 frames (h2_frames_exact):
 * then the record itself says so (more = TRACE_MORE_H2_CALL) and user
 * space follows the connection from here as far as its header blocks
 * allow (ext/h2trace.pyx). The same for socket calls (trace.bpf.c) and
 * the plaintext of SSL calls (tls.bpf.c). */
static __always_inline void span_h2_mark(struct trace_conn *tc, struct span_msg *ev, int start)
{
	if (!start || tc->h2)
		return;
	if (ev->cap_len >= 12 && is_h2_preface(ev->payload)) {
		tc->h2 = 1;
	} else if (ev->cap_len >= 9 && ev->bytes == ev->cap_len && h2_frames_exact(ev->payload, ev->cap_len)) {
		tc->h2 = 1;
		ev->more = TRACE_MORE_H2_CALL;
	}
}

/* Everything of a message start but its payload (and cap_len): the
 * connection's counters before this call, the tuple, the task, `seq`. */
static __always_inline void span_msg_fill(struct span_msg *ev, const struct trace_conn *tc,
					  const struct sock_tuple *t, __u64 key, __u64 pid_tgid, __u64 now,
					  __u32 seq, __u32 bytes, __u8 op, __u8 more)
{
	ev->ts_ns = now;
	ev->sk = key;
	ev->sk_sent = tc->sent;
	ev->sk_recv = tc->recv;
	ev->ts_last_send = tc->ts_last_send;
	ev->ts_last_recv = tc->ts_last_recv;
	ev->user = 0;
	__builtin_memcpy(ev->laddr, t->laddr, 16);
	__builtin_memcpy(ev->raddr, t->raddr, 16);
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->seq = seq;
	ev->bytes = bytes;
	ev->lport = t->lport;
	ev->rport = t->rport;
	ev->family = t->family;
	ev->op = op;
	ev->more = more;
	ev->seq_unknown = 0;
	/* both names as two 8-byte loads each from the task (BTF pointers),
	 * not bpf_get_current_comm + a probe-read string copy of the leader's:
	 * comm is always NUL-padded to its 16 bytes (__set_task_comm) */
	struct task_struct *task = bpf_get_current_task_btf();
	const __u64 *c = (const __u64 *)task->comm, *pc = (const __u64 *)task->group_leader->comm;
	__u64 *dc = (__u64 *)ev->comm, *dpc = (__u64 *)ev->pcomm;
	dc[0] = c[0];
	dc[1] = c[1];
	dpc[0] = pc[0];
	dpc[1] = pc[1];
}

/* Send a filled record (payload copied, cap_len set) to the ring. With
 * `trim_status` (a connection not seen pipelining: trace_conn.whole) an
 * HTTP/1.x response keeps its status line only: user space reads nothing
 * else of it, the headers and body would only fill the ring
 * (include/trace.h: TRACE_STATUS_KEEP). */
static __always_inline void span_msg_send(void *ring, struct span_msg *ev, int trim_status, __u32 *unqueried,
					  void *drops, __u32 drop_idx)
{
	if (trim_status && ev->cap_len > TRACE_STATUS_KEEP && is_http1_status(ev->payload))
		ev->cap_len = TRACE_STATUS_KEEP;
	/* the mask restated past a barrier: clang would otherwise drop it (it
	 * knows cap_len's bound, the verifier does not after its reloads) */
	__u32 cap = ev->cap_len;
	asm volatile("" : "+r"(cap));
	__u32 size = SPAN_MSG_MIN_SIZE + (cap & (2 * TRACE_PAYLOAD_MAX - 1));
	__u64 flag = ring_wake_flag(ring, unqueried, size, trace_wake_bytes);
	if (bpf_ringbuf_output(ring, ev, size, flag))
		count_drop(drops, drop_idx);
}

/* The end of a connection in trace_conns (key): a TRACE_OP_CLOSE record
 * with its final counters, and its entries go (trace_conns, trace_flags:
 * a later socket at the same address starts unflagged). Possibly softirq context:
 * no process, no tuple (user space knows the connection by its key from
 * its earlier records). */
static __always_inline void span_conn_close(void *ring, __u64 key, __u32 *unqueried, void *drops, __u32 drop_idx)
{
	struct trace_conn *tc = bpf_map_lookup_elem(&trace_conns, &key);
	if (!tc)
		return;
	struct span_msg *ev = unqueried ? bpf_ringbuf_reserve(ring, SPAN_MSG_MIN_SIZE, 0) : 0;
	if (ev) {
		__builtin_memset(ev, 0, SPAN_MSG_MIN_SIZE);
		ev->ts_ns = bpf_ktime_get_ns();
		ev->sk = key;
		ev->sk_sent = tc->sent;
		ev->sk_recv = tc->recv;
		ev->ts_last_send = tc->ts_last_send;
		ev->ts_last_recv = tc->ts_last_recv;
		ev->op = TRACE_OP_CLOSE;
		bpf_ringbuf_submit(ev, ring_wake_flag(ring, unqueried, SPAN_MSG_MIN_SIZE, trace_wake_bytes));
	} else {
		count_drop(drops, drop_idx);
	}
	bpf_map_delete_elem(&trace_conns, &key);
	/* only a connection user space saw can have flags (a flag written
	 * after this delete, for a socket closed meanwhile, does not match
	 * the next entry's `born`: span_flags_apply) */
	bpf_map_delete_elem(&trace_flags, &key);
}

#endif

/* HTTP/1.x pairing in the kernel, the one piece of code both capture
 * programs use (bpf/http.bpf.c: socket calls; bpf/tls.bpf.c: OpenSSL
 * plaintext). Records and state: include/http.h.
 *
 * A source calls, per call that moved bytes on a connection:
 *   http_peek_start(first 8 bytes)   is this a message start?
 *   - no:  http_count() on the connection's entry, if it has one;
 *   - yes: read up to HTTP_SCAN_MAX bytes of the call into s->buf, get or
 *          create the entry (http_conn_get), then http_messages() which
 *          handles every message start in the buffer and counts the call.
 * The end of a socket: http_close(). The idle flush: http_settle().
 *
 * Pairing: requests enter the connection's FIFO; a final response
 * belongs to the oldest waiting request (HTTP/1.1 keeps responses in
 * request order, RFC 9112 section 9.3.2); interim 1xx responses other
 * than 101 precede the final one of the same request (RFC 9110 section
 * 15.2) and count toward its bytes. The response is finished, and the
 * exchange reported, when the next response starts (its bytes end where
 * that one starts), when the socket ends (final counters), or by the idle
 * flush. A request's bytes end where the next request starts, else at the
 * counter's value when it is reported.
 *
 * BPF-only (needs vmlinux.h, include/http.h, include/drops.bpf.h,
 * include/sock_tuple.bpf.h, include/ring_wake.bpf.h). */
#ifndef DKEBPF_HTTP_MSG_H
#define DKEBPF_HTTP_MSG_H

/* stages left out for perf/bench_httpflow_e2e.py's ablation (bpf/http.bpf.c
 * lists them); 0: none, the product */
#ifndef HTTP_ABLATE
#define HTTP_ABLATE 0
#endif

#define W4(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)

/* Does the buffer start like an HTTP/1.x request or status line? Four
 * bytes cover every method of RFC 9110 section 9 and PATCH (RFC 5789);
 * user space parses the whole request line. */
static __always_inline int looks_like_http(const __u8 *p)
{
	__u32 w = (__u32)p[0] | (__u32)p[1] << 8 | (__u32)p[2] << 16 | (__u32)p[3] << 24;
	if (w == W4('H', 'T', 'T', 'P'))
		return p[4] == '/' && p[5] == '1' && p[6] == '.';
	return w == W4('G', 'E', 'T', ' ') || w == W4('P', 'O', 'S', 'T') || w == W4('P', 'U', 'T', ' ') ||
	       w == W4('H', 'E', 'A', 'D') || w == W4('D', 'E', 'L', 'E') || w == W4('O', 'P', 'T', 'I') ||
	       w == W4('P', 'A', 'T', 'C') || w == W4('C', 'O', 'N', 'N') || w == W4('T', 'R', 'A', 'C');
}

static __always_inline int is_response(const __u8 *p)
{
	return p[0] == 'H' && p[1] == 'T';
}

/* "HTTP/1.x NNN" -> status (100..599) and version (10, 11); 0 when it
 * is not a status line (RFC 9112 section 4). p has 12 readable bytes. */
static __always_inline __u16 status_line(const __u8 *p, __u8 *version)
{
	if (p[7] != '0' && p[7] != '1')
		return 0;
	if (p[8] != ' ')
		return 0;
	__u8 a = p[9] - '0', b = p[10] - '0', c = p[11] - '0';
	if (a > 9 || b > 9 || c > 9 || a < 1 || a > 5)
		return 0;
	*version = p[7] == '1' ? 11 : 10;
	return a * 100 + b * 10 + c;
}

/* The per-CPU working memory of a program: a call's first bytes (with
 * slack, so that a copy of up to HTTP_HEAD_MAX bytes starting anywhere
 * below HTTP_SCAN_MAX stays inside), and the record under construction. */
struct http_scratch {
	__u8 buf[HTTP_SCAN_MAX + HTTP_HEAD_MAX];
	struct http_exchange x;
	__u32 unqueried; /* include/ring_wake.bpf.h (also counts what the
			  * reserved records of the CPU add) */
};

/* &s->buf[off] for an off the caller checked to be < HTTP_SCAN_MAX: the
 * mask restates it for the verifier, the barrier keeps clang from dropping
 * the mask as redundant. buf has HTTP_HEAD_MAX bytes of slack after. */
static __always_inline const __u8 *buf_at(const struct http_scratch *s, __u32 off)
{
	asm volatile("" : "+r"(off));
	return &s->buf[off & (HTTP_SCAN_MAX - 1)];
}

/* The first len (<= HTTP_HEAD_MAX) bytes of a head, in 8-byte words
 * (rounded up): a request is mostly far shorter than HTTP_HEAD_MAX, and a
 * record ends after its head_len bytes. src needs no alignment (a memcpy
 * from an unknown alignment is byte moves; unaligned loads are allowed on
 * map values here, as in scan_header_end); dst is 8-byte aligned. */
static __always_inline void copy_head(__u8 *dst, const __u8 *src, __u32 len)
{
#pragma unroll
	for (int i = 0; i < HTTP_HEAD_MAX / 8; i++)
		if (i * 8 < len) /* no break: clang unrolls only single-exit loops */
			((__u64 *)dst)[i] = ((const __u64 *)src)[i];
}

/* Where to report and count: the including program's maps. */
struct http_out {
	void *ring;
	void *drops;
	void *heads; /* its HTTP_OVERFLOW_HEADS map */
	__u32 *unqueried; /* the CPU's count for ring_wake_flag (its scratch memory) */
	__u64 wake_bytes;
	__u8 source; /* HTTP_SRC_* */
};

/* A call's bytes, added to its connection's counters. */
static __always_inline void http_count(struct http_conn *hc, __u8 op, __s64 n, __u64 ts)
{
	if (op == HTTP_OP_SEND) {
		__sync_fetch_and_add(&hc->sent, n);
		hc->ts_last_send = ts;
	} else {
		__sync_fetch_and_add(&hc->recv, n);
		hc->ts_last_recv = ts;
	}
	hc->ts_last = ts;
}

/* The entry of a socket's first message start, with its tuple and process
 * name read once. `starts_with_request`/`op`: the message, which tells the
 * side (the side that sends the first request is the client). NULL when
 * not an IPv4/IPv6 TCP socket or no room (counted). */
static __always_inline struct http_conn *http_conn_new(void *conns, void *drops, __u64 sk, int starts_with_request,
						       __u8 op, __u32 tgid, struct http_conn *init)
{
	struct sock_tuple t = {};
	if (!read_tuple((struct sock *)sk, &t) || t.proto != IPPROTO_TCP)
		return 0;
	/* the scratch entry is reused: every field before the FIFO is set
	 * (the FIFO slots are written before they are read) */
	init->sent = init->recv = init->ts_last_send = init->ts_last_recv = init->ts_last = 0;
	init->resp_ts = init->resp_pos = init->resp_req_ts = 0;
	init->state = HTTP_RESP_NONE;
	init->head = init->tail = 0;
	init->_pad0 = 0;
	init->status = 0;
	init->resp_version = 0;
	init->_pad = 0;
	__builtin_memset(init->comm, 0, NF_COMM_LEN);
	init->pid = tgid;
	init->family = t.family;
	init->proto = t.proto;
	init->lport = t.lport;
	init->rport = t.rport;
	__builtin_memcpy(init->laddr, t.laddr, 16);
	__builtin_memcpy(init->raddr, t.raddr, 16);
	init->direction = (starts_with_request == (op == HTTP_OP_SEND)) ? NF_DIR_OUTGOING : NF_DIR_INCOMING;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	BPF_CORE_READ_STR_INTO(&init->comm, task, group_leader, comm);
	bpf_map_update_elem(conns, &sk, init, BPF_NOEXIST);
	struct http_conn *hc = bpf_map_lookup_elem(conns, &sk);
	if (!hc)
		count_drop(drops, HTTP_DROP_CONNS);
	return hc;
}

/* The overflow map of heads of a program (include/http.h
 * HTTP_HEADS_INLINE): entries only while a pipelined request waits. */
#define HTTP_OVERFLOW_HEADS(name)                          \
	struct {                                           \
		__uint(type, BPF_MAP_TYPE_HASH);           \
		__uint(map_flags, BPF_F_NO_PREALLOC);      \
		__uint(max_entries, 65536);                \
		__type(key, struct http_head_key);         \
		__type(value, struct http_head);           \
	} name SEC(".maps");

/* q[seq]'s head leaves the overflow map with it. */
static __always_inline void http_dequeue_head(const struct http_conn *hc, __u64 sk, __u32 seq,
					      const struct http_out *o)
{
	if (hc->q[seq % HTTP_FIFO].head_at == HTTP_HEAD_OVERFLOW) {
		struct http_head_key k = {.sk = sk, .seq = seq};
		bpf_map_delete_elem(o->heads, &k);
	}
}

static __always_inline __u64 req_counter(const struct http_conn *hc)
{
	return hc->direction == NF_DIR_OUTGOING ? hc->sent : hc->recv;
}

static __always_inline __u64 resp_counter(const struct http_conn *hc)
{
	return hc->direction == NF_DIR_OUTGOING ? hc->recv : hc->sent;
}

/* The record of the exchange of q[head], its response ending at resp_end
 * (stream offset). */
static __always_inline void http_fill(struct http_exchange *x, const struct http_conn *hc, __u64 sk, __u64 resp_end,
				      __u8 flags, const struct http_out *o)
{
	__u32 h = hc->head;
	const struct http_req *q = &hc->q[h % HTTP_FIFO];
	__u64 req_end = hc->tail - h > 1 ? hc->q[(h + 1) % HTTP_FIFO].pos : req_counter(hc);
	/* the request's last byte: the last request-way call before the
	 * response, when it is not older than the request itself */
	__u64 last_req = hc->resp_req_ts > q->ts ? hc->resp_req_ts : q->ts;
	x->sk = sk;
	x->ts_req = q->ts;
	x->ts_resp = hc->resp_ts;
	x->latency_ns = hc->resp_ts > last_req ? hc->resp_ts - last_req : 0;
	x->req_bytes = req_end > q->pos ? req_end - q->pos : 0;
	x->resp_bytes = resp_end > hc->resp_pos ? resp_end - hc->resp_pos : 0;
	__builtin_memcpy(x->laddr, hc->laddr, 16);
	__builtin_memcpy(x->raddr, hc->raddr, 16);
	x->lport = hc->lport;
	x->rport = hc->rport;
	x->pid = hc->pid;
	x->tid = q->tid;
	x->status = hc->status;
	x->head_len = q->head_len;
	x->family = hc->family;
	x->proto = hc->proto;
	x->direction = hc->direction;
	x->source = o->source;
	x->resp_version = hc->resp_version;
	x->flags = flags;
	__builtin_memcpy(x->comm, hc->comm, NF_COMM_LEN);
	const struct http_head *hd = &hc->heads[h % HTTP_HEADS_INLINE];
	if (q->head_at != HTTP_HEAD_INLINE) {
		struct http_head_key k = {.sk = sk, .seq = h};
		hd = q->head_at == HTTP_HEAD_OVERFLOW ? bpf_map_lookup_elem(o->heads, &k) : 0;
	}
	if (hd && HTTP_ABLATE != 7)
		copy_head(x->head, hd->b, q->head_len);
	else
		x->head_len = 0;
}

/* Is q[head]'s final response under way (to be reported, being reported
 * by the idle flush, or reported)? */
static __always_inline int resp_final(__u64 state)
{
	__u64 st = state & HTTP_RESP_MASK;
	return st == HTTP_RESP_FINAL || st == HTTP_RESP_TAKEN || st == HTTP_RESP_REPORTING;
}

/* The owner's claim of q[head]'s report before it dequeues the request:
 * 1 when it reports it. A flush that is filling the record meanwhile loses
 * it (the owner may go on to reuse the slots the flush reads: the next
 * response's fields at once, the head's slot two requests later), and
 * discards its record (http_settle). */
static __always_inline int owner_claims(struct http_conn *hc)
{
	__u64 st = __sync_val_compare_and_swap(&hc->state, HTTP_RESP_FINAL, HTTP_RESP_TAKEN);
	if (st == HTTP_RESP_FINAL)
		return 1;
	return (st & HTTP_RESP_MASK) == HTTP_RESP_REPORTING &&
	       __sync_val_compare_and_swap(&hc->state, st, HTTP_RESP_TAKEN) == st;
}

/* Report the exchange of q[head] (unless the idle flush already did) and
 * dequeue it. */
static __always_inline void http_finish(struct http_conn *hc, __u64 sk, __u64 resp_end, __u8 flags,
					const struct http_out *o, struct http_scratch *s)
{
	if (owner_claims(hc)) {
		struct http_exchange *x = &s->x;
		http_fill(x, hc, sk, resp_end, flags, o);
		/* the record ends after its head bytes (<= HTTP_HEAD_MAX) */
		__u32 size = HTTP_EXCHANGE_MIN_SIZE + (x->head_len & (2 * HTTP_HEAD_MAX - 1));
		if (size > sizeof(*x))
			size = sizeof(*x);
		if (HTTP_ABLATE != 5 &&
		    bpf_ringbuf_output(o->ring, x, size, ring_wake_flag(o->ring, o->unqueried, size, o->wake_bytes)))
			count_drop(o->drops, HTTP_DROP_RING);
	}
	http_dequeue_head(hc, sk, hc->head, o);
	hc->head++;
	hc->state = HTTP_RESP_NONE;
}

/* From a context that may interrupt a program using the scratch memory
 * (tcp_destroy_sock in softirq, the idle flush): a reserved record.
 * `claim`: the state the flush set (HTTP_RESP_REPORTING | seq << 32), the
 * record is sent only if the owner did not take the report over while it
 * was filled; 0: the owner's own report. */
static __always_inline void http_report_reserved(struct http_conn *hc, __u64 sk, __u64 resp_end, __u8 flags,
						 const struct http_out *o, __u64 claim)
{
	struct http_exchange *x = HTTP_ABLATE == 5 ? 0 : bpf_ringbuf_reserve(o->ring, sizeof(*x), 0);
	if (!x) {
		if (claim)
			__sync_val_compare_and_swap(&hc->state, claim, HTTP_RESP_TAKEN);
		count_drop(o->drops, HTTP_DROP_RING);
		return;
	}
	http_fill(x, hc, sk, resp_end, flags, o);
	if (claim && __sync_val_compare_and_swap(&hc->state, claim, HTTP_RESP_TAKEN) != claim) {
		/* the owner reports it (what was read may be the next one's) */
		bpf_ringbuf_discard(x, BPF_RB_NO_WAKEUP);
		return;
	}
	/* woken like the other records: a load of short connections reports
	 * every exchange from here */
	bpf_ringbuf_submit(x, ring_wake_flag(o->ring, o->unqueried, sizeof(*x), o->wake_bytes));
}

/* The socket ends: its last response is complete; requests still waiting
 * are counted. */
static __always_inline void http_close(struct http_conn *hc, __u64 sk, const struct http_out *o)
{
	if (resp_final(hc->state)) {
		if (owner_claims(hc))
			http_report_reserved(hc, sk, resp_counter(hc), HTTP_X_CLOSED, o, 0);
		http_dequeue_head(hc, sk, hc->head, o);
		hc->head++;
	}
	__u32 waiting = hc->tail - hc->head;
	for (__u32 i = 0; i < HTTP_FIFO; i++)
		if (i < waiting)
			http_dequeue_head(hc, sk, hc->head + i, o);
	if (waiting && waiting <= HTTP_FIFO) {
		__u32 idx = HTTP_DROP_UNANSWERED;
		__u64 *v = bpf_map_lookup_elem(o->drops, &idx);
		if (v)
			*v += waiting;
	}
}

/* The idle flush (bpf_for_each_map_elem over a connection map): report an
 * exchange whose final response has been quiet for settle_ns. The owner
 * may be running on another CPU: the state's cmpxchg decides who reports. */
static __always_inline void http_settle(struct http_conn *hc, __u64 sk, __u64 now, __u64 settle_ns,
					const struct http_out *o)
{
	if (hc->state != HTTP_RESP_FINAL || now - hc->ts_last < settle_ns)
		return;
	__u64 claim = HTTP_RESP_REPORTING | (__u64)hc->head << 32;
	if (__sync_val_compare_and_swap(&hc->state, HTTP_RESP_FINAL, claim) != HTTP_RESP_FINAL)
		return;
	http_report_reserved(hc, sk, resp_counter(hc), HTTP_X_SETTLED, o, claim);
}

/* The idle flush of a program: its connection map `conns`, its per-CPU
 * scratch map `scratch` of `struct scratch_type`, `OUT(sc)` its struct
 * http_out. Defines http_settle_one (the callback) and
 * http_idle_flush(sk, ret), which runs it when the collector itself sent
 * HTTP_FLUSH_BYTES on an AF_UNIX socket (include/http.h). */
struct http_flush_ctx {
	__u64 now;
};

#define HTTP_IDLE_FLUSH(conns, scratch, scratch_type, OUT)                                                        \
	static long http_settle_one(void *map, __u64 *key, struct http_conn *hc, struct http_flush_ctx *c) \
	{                                                                                           \
		__u32 zero = 0;                                                                     \
		struct scratch_type *sc = bpf_map_lookup_elem(&scratch, &zero);                     \
		if (!sc)                                                                            \
			return 1;                                                                   \
		struct http_out o = OUT(sc);                                                        \
		http_settle(hc, *key, c->now, settle_ns, &o);                                       \
		return 0;                                                                           \
	}                                                                                           \
	static __always_inline int http_idle_flush(const struct sock *sk, int ret)                 \
	{                                                                                           \
		if (sk->__sk_common.skc_family != 1 /* AF_UNIX */ || ret != HTTP_FLUSH_BYTES)      \
			return 0;                                                                   \
		struct http_flush_ctx c = {.now = bpf_ktime_get_ns()};                              \
		bpf_for_each_map_elem(&conns, http_settle_one, &c, 0);                              \
		return 1;                                                                           \
	}

_Static_assert(__builtin_offsetof(struct http_conn, heads) % 8 == 0 &&
	       __builtin_offsetof(struct http_exchange, head) % 8 == 0, "copy_head writes 8-byte words");

/* A request starts at s->buf[off], stream offset pos. */
static __always_inline void on_request(struct http_conn *hc, __u64 sk, struct http_scratch *s, __u32 off, __u32 cap,
				       __u64 pos, __u64 ts, __u32 tid, const struct http_out *o)
{
	if (hc->tail - hc->head >= HTTP_FIFO) {
		count_drop(o->drops, HTTP_DROP_FIFO_FULL);
		return;
	}
	__u32 seq = hc->tail;
	struct http_req *q = &hc->q[seq % HTTP_FIFO];
	q->ts = ts;
	q->pos = pos;
	q->tid = tid;
	__u32 n = cap - off;
	q->head_len = n < HTTP_HEAD_MAX ? n : HTTP_HEAD_MAX;
	/* off < HTTP_SCAN_MAX: inside buf with its slack */
	const __u8 *src = buf_at(s, off);
	if (seq - hc->head < HTTP_HEADS_INLINE) {
		/* the slot's last user, request seq - HTTP_HEADS_INLINE, was
		 * dequeued */
		if (HTTP_ABLATE != 7)
			copy_head(hc->heads[seq % HTTP_HEADS_INLINE].b, src, q->head_len);
		q->head_at = HTTP_HEAD_INLINE;
	} else {
		struct http_head_key k = {.sk = sk, .seq = seq};
		q->head_at = HTTP_HEAD_OVERFLOW;
		if (bpf_map_update_elem(o->heads, &k, src, BPF_ANY)) {
			q->head_at = HTTP_HEAD_LOST;
			count_drop(o->drops, HTTP_DROP_CONNS);
		}
	}
	hc->tail++;
}

/* A status line starts at stream offset pos. */
static __always_inline void on_response(struct http_conn *hc, __u64 sk, __u16 status, __u8 version, __u64 pos,
					__u64 ts, const struct http_out *o, struct http_scratch *s)
{
	if (resp_final(hc->state))
		http_finish(hc, sk, pos, 0, o, s); /* the previous response ends here */
	if (hc->head == hc->tail) {
		/* no request waiting: it answers one sent before we watched */
		if (status >= 200 || status == 101)
			count_drop(o->drops, HTTP_DROP_UNMATCHED);
		return;
	}
	if (status < 200 && status != 101) { /* interim: the exchange goes on */
		if (hc->state == HTTP_RESP_NONE) {
			hc->resp_pos = pos;
			hc->state = HTTP_RESP_INTERIM;
		}
		return;
	}
	if (hc->state != HTTP_RESP_INTERIM)
		hc->resp_pos = pos;
	hc->resp_ts = ts;
	hc->resp_req_ts = hc->direction == NF_DIR_OUTGOING ? hc->ts_last_send : hc->ts_last_recv;
	hc->status = status;
	hc->resp_version = version;
	/* the fields above before the state that lets the idle flush read them */
	asm volatile("" ::: "memory");
	hc->state = HTTP_RESP_FINAL;
}

/* A scan of s->buf[from:cap] with bpf_loop: the callback is verified
 * once, where an open-coded loop is verified once per byte and path. */
struct http_scan {
	const struct http_scratch *s;
	__u32 from;
	__u32 cap;
	__u32 found; /* offset, 0: none */
	__u32 pos;   /* scan_header_end: where the next step looks */
};

/* Index (0..7) of the lowest flagged byte of a haszero() mask (bits 7,
 * 15, .. 63): three tests where BPF has no count-trailing-zeros. */
static __always_inline __u32 lowest_flagged_byte(__u64 m)
{
	__u32 k = 0;
	if (!(m & 0xffffffffULL)) {
		k += 4;
		m >>= 32;
	}
	if (!(m & 0xffffULL)) {
		k += 2;
		m >>= 16;
	}
	if (!(m & 0xffULL))
		k += 1;
	return k;
}

/* Offset just past a CRLF CRLF: the end of a header block. One step per
 * 8-byte word without LF (most of a header line) and one per LF: the
 * step jumps to the word's first LF (the lowest flagged byte of the
 * zero-byte test is exact; the borrow only flags bytes above a zero one)
 * and looks at the 3 bytes before it. */
static long scan_header_end(__u32 i, struct http_scan *c)
{
	__u32 at = c->pos;
	if (at >= c->cap || at >= HTTP_SCAN_MAX)
		return 1;
	/* buf has HTTP_HEAD_MAX bytes of slack past HTTP_SCAN_MAX */
	const __u8 *p = buf_at(c->s, at);
	__u64 x = *(const __u64 *)p ^ 0x0a0a0a0a0a0a0a0aULL; /* a zero byte where there is '\n' */
	__u64 m = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
	if (!m) {
		c->pos = at + 8;
		return 0;
	}
	__u32 lf = at + lowest_flagged_byte(m);
	if (lf >= c->cap) /* past the call's bytes: stale scratch memory */
		return 1;
	c->pos = lf + 1;
	if (lf < c->from + 3)
		return 0;
	const __u8 *q = buf_at(c->s, lf - 3);
	if (q[0] == '\r' && q[1] == '\n' && q[2] == '\r') {
		c->found = lf + 1;
		return 1;
	}
	return 0;
}

/* Offset of the next "HTTP/1.": a response with a body followed by another
 * response in the same call (only looked for while more requests wait). */
static long scan_status_line(__u32 i, struct http_scan *c)
{
	__u32 at = c->from + i;
	if (at + 12 > c->cap || at >= HTTP_SCAN_MAX)
		return 1;
	const __u8 *p = buf_at(c->s, at);
	if (p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/' && p[5] == '1' && p[6] == '.') {
		c->found = at;
		return 1;
	}
	return 0;
}

static __always_inline __u32 header_end(const struct http_scratch *s, __u32 from, __u32 cap)
{
	struct http_scan c = {.s = s, .from = from, .cap = cap, .pos = from};
	if (from < cap)
		bpf_loop(cap - from, scan_header_end, &c, 0);
	return c.found;
}

static __always_inline __u32 next_status_line(const struct http_scratch *s, __u32 from, __u32 cap)
{
	struct http_scan c = {.s = s, .from = from, .cap = cap};
	if (from < cap)
		bpf_loop(cap - from, scan_status_line, &c, 0);
	return c.found;
}

/* Every message start in s->buf[0:cap] (the first `cap` of the call's
 * `bytes`, a message start at 0), then the call's bytes counted. */
static __always_inline void http_messages(struct http_conn *hc, __u64 sk, struct http_scratch *s, __u32 cap,
					  __u8 op, __u64 bytes, __u64 ts, __u32 tid, const struct http_out *o)
{
	__u64 base = op == HTTP_OP_SEND ? hc->sent : hc->recv;
	__u32 off = 0;
	for (int k = 0; k < HTTP_FIFO; k++) {
		if (off + 12 > cap || off >= HTTP_SCAN_MAX)
			break;
		const __u8 *p = buf_at(s, off);
		__u32 next = 0;
		if (is_response(p)) {
			__u8 version = 0;
			__u16 status = status_line(p, &version);
			if (!status)
				break;
			on_response(hc, sk, status, version, base + off, ts, o, s);
			/* another response in this call only if more requests wait */
			if (hc->tail - hc->head > 1 || hc->state == HTTP_RESP_INTERIM) {
				__u32 e = header_end(s, off + 12, cap);
				next = e ? next_status_line(s, e, cap) : 0;
			}
		} else {
			if (!looks_like_http(p))
				break;
			on_request(hc, sk, s, off, cap, base + off, ts, tid, o);
			/* pipelined requests follow a request without a body */
			next = HTTP_ABLATE == 6 ? 0 : header_end(s, off + 12, cap);
			if (next && (next + 8 > cap || !looks_like_http(buf_at(s, next))))
				next = 0;
		}
		if (!next)
			break;
		off = next;
	}
	http_count(hc, op, bytes, ts);
}

#endif

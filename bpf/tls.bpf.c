// SPDX-License-Identifier: GPL-2.0
/* httpflow-tls: the plaintext of OpenSSL connections, without kprobes.
 *
 * Hooks:
 *   uprobe/uretprobe SSL_read, SSL_write, SSL_read_ex, SSL_write_ex
 *       (libssl.so.3 and libssl.so.1.1; user space attaches them once per
 *       library file, on ssl_read_internal/ssl_write_internal with the _ex
 *       programs where it can: dkebpf/plugins/tls_probes.py says why): the
 *       entry saves the SSL object and the plaintext buffer per thread, the
 *       return hands what was really read or written to the pairing
 *       (include/http_msg.bpf.h)
 *   uprobe/uretprobe SSL_do_handshake (SSL_connect and SSL_accept call it):
 *       only to learn the socket of an SSL object before its first read
 *       (with trace_spans: and that its connection is seen from its start)
 *   tp_btf/sock_send_length, tp_btf/sock_recv_length: the socket. OpenSSL
 *       moves ciphertext through its BIO with write/send/read/recv on the
 *       same thread while inside SSL_*; net/socket.c fires these two
 *       tracepoints with the struct sock * for every such call on a socket
 *       (sock_sendmsg_nosec / sock_recvmsg_nosec). A thread inside an SSL
 *       call that touches a socket thus names the SSL object's socket, which
 *       is remembered per (process, SSL *) for later calls that are served
 *       from OpenSSL's own buffer and make no socket call at all.
 *       A send of HTTP_FLUSH_BYTES on an AF_UNIX socket by the collector
 *       itself runs the idle flush over `tls_conns` (include/http.h).
 *   tp_btf/tcp_destroy_sock: the end of a connection that carried HTTP:
 *       its last exchange is reported with the final plaintext counters.
 *
 * The socket tracepoints fire only for socket I/O, so the cost outside TLS
 * is one hash lookup per socket call; syscall tracepoints on read/write
 * would fire for every file and pipe as well.
 *
 * Pairing is bpf/http.bpf.c's (include/http_msg.bpf.h): the plaintext of
 * every call goes through the connection's struct http_conn (`tls_conns`,
 * keyed by struct sock *), one struct http_exchange per finished exchange
 * goes to the ring. The
 * ciphertext on the same socket never looks like HTTP to bpf/http.bpf.c,
 * so each request is reported once, from here.
 *
 * A data call whose socket is still unknown is dropped and counted
 * (TLS_DROP_NO_SOCK): neither its tags nor its counters have a connection.
 *
 * With `trace_spans` set (a second load of this object, by ebpf-trace:
 * dkebpf/bpf_objects.py TLS_TRACE) the pairing is off and the plaintext of
 * the SSL calls of traced processes becomes ebpf-trace's message starts
 * instead (struct span_msg, include/trace_span.bpf.h), written into
 * trace.bpf.o's ring with its process list and connection table (the
 * maps trace_events, trace_pids, trace_conns, trace_flags are that
 * object's, reused):
 *   - the key is the socket | TLS_SK_TAG (include/tls.h): the plaintext is
 *     a connection of its own to user space, never mixed with the
 *     ciphertext bpf/trace.bpf.c sees on the socket, which is flagged
 *     `ignored` in trace_conns at the socket's first SSL call (learn_sock)
 *     so trace.bpf.c only counts it from then on;
 *   - runs, short starts and counters as trace.bpf.c's, per SSL call; a
 *     connection whose first plaintext is the HTTP/2 client preface, or,
 *     one older than the tracing, whose message start is whole HTTP/2
 *     frames (the same rule as trace.bpf.c's: span_h2_mark), has every
 *     SSL call sent from then on (trace_conn.h2), its buffer's first
 *     TRACE_PAYLOAD_MAX bytes (an SSL call has one buffer: no iovecs);
 *   - seq: the number both ends of the connection compute for the first
 *     byte of the call: where the TLS record carrying it ends + its offset
 *     in the record's plaintext. SSL_write: the socket's write_seq after
 *     the first send inside the call (the end of its first record, which
 *     the call's buffer begins), SSL_read: copied_seq when it returns
 *     (OpenSSL reads no further than the record it returns, which ends
 *     there) + what earlier SSL_reads returned of the record when this
 *     one read nothing from the socket and the one before filled its
 *     buffer (the record did not fit: trace_conn.rec_off). A connection
 *     whose handshake was not seen (older than the tracing: its entry is
 *     made at a data call, not at the handshake) does not know that offset
 *     (trace_conn.rec_unknown) until a read starts a record (it read from
 *     the socket) or ends one (it did not fill its buffer: the next starts
 *     one); reads before carry span_msg.seq_unknown, not a guess. HTTP/2's
 *     frames get the call's seq + their offset in it (ext/h2trace.pyx). Not
 *     covered: OpenSSL's read_ahead (nginx sets it): a read that took
 *     several records from the socket names them all by the last one's
 *     end.
 *   - tcp_destroy_sock ends the plaintext connection (TRACE_OP_CLOSE).
 */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "include/netflow.h"
#include "include/http.h"
#include "include/tls.h"

char LICENSE[] SEC("license") = "GPL";

/* knobs, set by user space between open and load */
const volatile __u8 ipv6_disabled = 0;
/* the collector's own TLS (e.g. an https DataKit address) is not reported */
const volatile __u32 self_tgid = 0;
/* wake the reader once this much waits in the ring (include/ring_wake.bpf.h) */
const volatile __u32 wakeup_bytes = 1 << 19;
/* the idle flush reports responses quiet this long */
const volatile __u64 settle_ns = 1000000000;
/* 1: ebpf-trace's TLS spans instead of httpflow's exchanges (above) */
const volatile __u8 trace_spans = 0;
/* with trace_spans: every process but TRACE_PID_EXCLUDED ones (as trace.bpf.c) */
const volatile __u8 trace_all = 0;

#include "include/sock_tuple.bpf.h" /* uses ipv6_disabled */
#include "include/drops.bpf.h"
#include "include/ring_wake.bpf.h"
#include "include/http_msg.bpf.h"
#include "include/trace_span.bpf.h"


/* ssl_call.kind */
#define CALL_NONE 0 /* the thread is not inside a probed SSL call */
#define CALL_READ 1
#define CALL_WRITE 2
#define CALL_READ_EX 3
#define CALL_WRITE_EX 4
#define CALL_HANDSHAKE 5

/* An SSL_* call in progress on one thread. */
struct ssl_call {
	__u64 ssl;   /* SSL * */
	__u64 buf;   /* user buffer with (write) or for (read) the plaintext */
	__u64 lenp;  /* _ex: size_t *written / *readbytes */
	__u64 sk;    /* struct sock * seen inside this call, 0 until then */
	__u32 seq;   /* trace_spans, a write: the socket's write_seq after its first send */
	__u32 num;   /* a read: the buffer's size */
	__u8 kind;   /* CALL_* */
	__u8 sent;   /* seq is set */
	__u8 recvd;  /* trace_spans, a read: it read from the socket */
};

/* Per thread (task storage): the call in progress, CALL_NONE between
 * calls. Found from the task itself, not by hashing its id: the socket
 * tracepoints, which fire for every socket call of every task, cost one
 * pointer check for the tasks that never made an SSL call. Freed with the
 * task (a thread killed inside a blocking SSL_read leaves nothing behind). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ssl_call);
} ssl_calls SEC(".maps");

static __always_inline struct ssl_call *this_call(__u64 flags)
{
	return bpf_task_storage_get(&ssl_calls, bpf_get_current_task_btf(), 0, flags);
}

/* SSL pointers are addresses in one process: the key needs the process. */
struct ssl_key {
	__u64 ssl;
	__u32 tgid;
	__u32 _pad;
};

/* (process, SSL *) -> struct sock *. LRU: nothing tells us when an SSL
 * object is freed; connections that stopped talking age out. A reused SSL
 * address gets its new socket with the first socket call of the new
 * connection (the handshake makes several). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ssl_key);
	__type(value, __u64);
} ssl_socks SEC(".maps");

/* Pairing state of connections that carried an HTTP message (the struct
 * of bpf/http.bpf.c's http_conns); not preallocated, removed at
 * tcp_destroy_sock. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct http_conn);
} tls_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* resized by user space (bpf_objects.TLS); with trace_spans unused */
	__uint(max_entries, 1 << 12);
} events SEC(".maps");

/* with trace_spans: trace.bpf.o's `events` (reused), declared at its size */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TRACE_EVENTS_RING_BYTES);
} trace_events SEC(".maps");

struct tls_scratch {
	struct http_scratch h;
	struct http_conn init; /* a new entry, too big for the stack */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_scratch);
} scratch SEC(".maps");

DROP_COUNTERS(drops, TLS_DROP_MAX);
HTTP_OVERFLOW_HEADS(tls_heads)

#define TLS_OUT(sc) {.ring = &events, .drops = &drops, .heads = &tls_heads, .unqueried = &(sc)->h.unqueried, \
		     .wake_bytes = wakeup_bytes, .source = HTTP_SRC_SSL}

HTTP_IDLE_FLUSH(tls_conns, scratch, tls_scratch, TLS_OUT)

static __always_inline int enter(void *ssl, void *buf, __u64 num, void *lenp, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (self_tgid && (id >> 32) == self_tgid)
		return 0;
	/* ebpf-trace's spans: only traced processes (the others' SSL calls
	 * would make task storage, ssl_socks entries and "socket unknown"
	 * drops for nothing; their entry, if any, stays CALL_NONE: leave()
	 * ignores it) */
	if (trace_spans && !traced(id >> 32))
		return 0;
	/* the thread's entry stays between its calls, rewritten in place */
	struct ssl_call *c = this_call(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c) {
		count_drop(&drops, TLS_DROP_CALLS);
		return 0;
	}
	c->ssl = (__u64)ssl;
	c->buf = (__u64)buf;
	c->lenp = (__u64)lenp;
	c->sk = 0;
	c->sent = 0;
	c->recvd = 0;
	c->num = num > 0xffffffff ? 0xffffffff : num;
	c->kind = kind;
	return 0;
}

/* trace_spans: a TCP socket of a traced process carries TLS from now on:
 * trace.bpf.c is to count its ciphertext only (the plaintext's spans come
 * from here, under the tagged key). */
static __always_inline void trace_ignore_cipher(struct sock *sk)
{
	if (!tcp_stream(sk) || !traced(bpf_get_current_pid_tgid() >> 32))
		return;
	struct trace_conn *tc = trace_conn_get((__u64)sk, 0, &drops, TLS_DROP_SPAN_CONNS);
	if (tc)
		tc->ignored = 1;
}

/* trace_spans: a handshake on the socket: its plaintext's entry is made
 * now, its record state known (rec_unknown 0: the first record read will
 * start at its start). An entry made later, at a data call, is of a
 * connection older than the tracing (trace_call). enter() took traced
 * processes only. + not |: the verifier allows no bitwise operation on
 * the typed pointer (bit 0 is clear: the same). */
static __always_inline void trace_handshake(struct sock *sk)
{
	if (tcp_stream(sk))
		trace_conn_get((__u64)sk + TLS_SK_TAG, 0, &drops, TLS_DROP_SPAN_CONNS);
}

/* A socket call on this thread: if the thread is inside an SSL call, the
 * socket is the SSL object's. */
static __always_inline void learn_sock(struct sock *sk, int is_send, int ret)
{
	struct ssl_call *c = this_call(0);
	if (!c || c->kind == CALL_NONE)
		return;
	if (trace_spans && is_send && !c->sent) {
		/* the first send of the call: its first record ends here */
		c->seq = KERNEL_CAST(struct tcp_sock, sk)->write_seq;
		c->sent = 1;
	}
	if (!is_send && ret > 0)
		c->recvd = 1;
	if (c->sk == (__u64)sk)
		return;
	c->sk = (__u64)sk;
	if (trace_spans && c->kind == CALL_HANDSHAKE)
		trace_handshake(sk);
	struct ssl_key k = {.ssl = c->ssl, .tgid = bpf_get_current_pid_tgid() >> 32};
	__u64 *known = bpf_map_lookup_elem(&ssl_socks, &k);
	if (known && *known == (__u64)sk)
		return; /* the usual case: a lookup is cheaper than an update */
	__u64 v = (__u64)sk;
	if (bpf_map_update_elem(&ssl_socks, &k, &v, BPF_ANY))
		count_drop(&drops, TLS_DROP_SOCKS);
	if (trace_spans)
		trace_ignore_cipher(sk);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tls_sock_send, struct sock *sk, int ret, int flags)
{
	if (self_tgid && (bpf_get_current_pid_tgid() >> 32) == self_tgid) {
		if (!trace_spans)
			http_idle_flush(sk, ret);
		return 0;
	}
	learn_sock(sk, 1, ret);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tls_sock_recv, struct sock *sk, int ret, int flags)
{
	learn_sock(sk, 0, ret);
	return 0;
}

/* trace_spans: an SSL call of a traced process that moved `bytes` of
 * plaintext on socket sk: a message start when it begins a run (as
 * trace.bpf.c's on_call), else counted. */
static __always_inline void trace_call(const struct ssl_call *c, struct sock *sk, __s64 bytes, __u64 id)
{
	if (!traced(id >> 32))
		return;
	if (!tcp_stream(sk))
		return;
	__u8 op = (c->kind == CALL_READ || c->kind == CALL_READ_EX) ? TRACE_OP_RECV : TRACE_OP_SEND;
	__u32 n = bytes > 0xffffffffLL ? 0xffffffff : (__u32)bytes;
	__u64 key = (__u64)sk | TLS_SK_TAG;
	__u64 now = bpf_ktime_get_ns();
	int due, start;
	struct sock_tuple t = {};
	struct span_scratch *s;
	/* an entry made here, not at the handshake (trace_handshake): a
	 * connection older than the tracing, where the record a read
	 * continues is not known */
	struct trace_conn *tc = span_call_begin(sk, key, op, 1, &due, &start, &t, &s, &drops, TLS_DROP_SPAN_CONNS);
	if (!tc)
		return;
	/* a read from OpenSSL's buffer alone goes on with the record an
	 * earlier read began if that one filled its buffer (else it ended
	 * the record); a read from the socket starts a record. Until a read
	 * starts one (or ends one: the next starts one) on a connection met
	 * mid-stream, where a read begins in its record is unknown: its seq
	 * is not sent (span_msg.seq_unknown) rather than a wrong one. */
	__u32 rec_off = 0;
	__u8 unknown = 0;
	if (op == TRACE_OP_RECV) {
		if (c->recvd) {
			tc->rec_unknown = 0;
		} else {
			rec_off = tc->rec_off;
			unknown = tc->rec_unknown;
		}
		tc->rec_off = n == c->num ? rec_off + n : 0;
		if (n != c->num)
			tc->rec_unknown = 0;
	}
	if (s) {
		const struct tcp_sock *tp = KERNEL_CAST(struct tcp_sock, sk);
		__u32 seq = op == TRACE_OP_RECV ? (unknown ? 0 : tp->copied_seq + rec_off)
						: c->sent ? c->seq : tp->write_seq;
		span_msg_fill(&s->ev, tc, &t, key, id, now, seq, n, op, span_more(tc, start));
		s->ev.seq_unknown = unknown;
		__u32 cap = n < TRACE_PAYLOAD_MAX ? n : TRACE_PAYLOAD_MAX;
		/* the mask restates the bound for the verifier (the slack takes
		 * what it lets through), the barrier keeps clang from dropping it */
		asm volatile("" : "+r"(cap));
		cap &= 2 * TRACE_PAYLOAD_MAX - 1;
		if (bpf_probe_read_user(s->ev.payload, cap, (void *)c->buf)) {
			count_drop(&drops, HTTP_DROP_READ);
			cap = 0;
		}
		s->ev.cap_len = cap;
		span_h2_mark(tc, &s->ev, start);
		span_msg_send(&trace_events, &s->ev, !tc->whole, &s->unqueried, &drops, TLS_DROP_SPAN_RING);
	}
	span_call_end(tc, op, due, start, n, now);
}

static __always_inline int leave(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct ssl_call *cp = this_call(0);
	if (!cp || cp->kind == CALL_NONE)
		return 0;
	struct ssl_call c = *cp;
	cp->kind = CALL_NONE; /* the thread is out of SSL_*: its socket calls name nothing */

	__s64 bytes = ret;
	if (c.kind == CALL_READ_EX || c.kind == CALL_WRITE_EX) {
		/* the _ex functions return 1 on success and the byte count in
		 * *readbytes / *written (OpenSSL 1.1.1+, ssl/ssl_lib.c) */
		__u64 n = 0;
		if (ret != 1 || !c.lenp || bpf_probe_read_user(&n, sizeof(n), (void *)c.lenp))
			return 0;
		bytes = (__s64)n;
	} else if (c.kind != CALL_READ && c.kind != CALL_WRITE) {
		return 0; /* the handshake: its socket calls did the work */
	}
	if (bytes <= 0)
		return 0; /* an error or WANT_READ/WANT_WRITE: nothing moved */

	__u64 sk = c.sk;
	if (!sk) {
		struct ssl_key k = {.ssl = c.ssl, .tgid = id >> 32};
		__u64 *v = bpf_map_lookup_elem(&ssl_socks, &k);
		if (v)
			sk = *v;
	}
	if (!sk) {
		count_drop(&drops, TLS_DROP_NO_SOCK);
		return 0;
	}
	if (trace_spans) {
		trace_call(&c, (struct sock *)sk, bytes, id);
		return 0;
	}

	__u8 op = (c.kind == CALL_READ || c.kind == CALL_READ_EX) ? HTTP_OP_RECV : HTTP_OP_SEND;
	__u64 ts = bpf_ktime_get_ns();
	struct http_conn *hc = bpf_map_lookup_elem(&tls_conns, &sk);
	__u32 zero = 0;
	struct tls_scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!sc)
		return 0;
	struct http_scratch *s = &sc->h;
	/* after a read the buffer holds what SSL_read returned; after a write
	 * it still holds what the caller passed in. 8 bytes tell a message
	 * start; everything else is a continuation. */
	if (bytes < 8 || bpf_probe_read_user(s->buf, 8, (void *)c.buf) || !looks_like_http(s->buf)) {
		if (hc)
			http_count(hc, op, bytes, ts);
		return 0;
	}
	__u32 cap = bytes < HTTP_SCAN_MAX ? (__u32)bytes : HTTP_SCAN_MAX;
	asm volatile("" : "+r"(cap)); /* keep the bound below for the verifier */
	if (cap > HTTP_SCAN_MAX)
		cap = HTTP_SCAN_MAX;
	struct http_out o = TLS_OUT(sc);
	if (bpf_probe_read_user(s->buf, cap, (void *)c.buf)) {
		count_drop(&drops, HTTP_DROP_READ);
		if (hc)
			http_count(hc, op, bytes, ts);
		return 0;
	}
	if (!hc) {
		hc = http_conn_new(&tls_conns, &drops, sk, !is_response(s->buf), op, id >> 32, &sc->init);
		if (!hc) {
			count_drop(&drops, TLS_DROP_NOT_TCP);
			return 0;
		}
	}
	http_messages(hc, sk, s, cap, op, bytes, ts, tid, &o);
	return 0;
}

/* The end of a TCP socket (fires once, after the owner's last read; see
 * netflow.bpf.c): its last exchange is complete. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tls_sock_destroy, struct sock *sk)
{
	if (trace_spans) {
		__u32 zero = 0;
		struct span_scratch *s = bpf_map_lookup_elem(&span_buf, &zero);
		/* + not |: the verifier allows no bitwise operation on the
		 * typed pointer (bit 0 is clear: the same) */
		span_conn_close(&trace_events, (__u64)sk + TLS_SK_TAG, s ? &s->unqueried : 0, &drops,
				TLS_DROP_SPAN_RING);
		return 0;
	}
	__u64 key = (__u64)sk;
	struct http_conn *hc = bpf_map_lookup_elem(&tls_conns, &key);
	__u32 zero = 0;
	struct tls_scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!hc || !sc)
		return 0;
	struct http_out o = TLS_OUT(sc);
	http_close(hc, key, &o);
	bpf_map_delete_elem(&tls_conns, &key);
	return 0;
}

/* The entry programs. libbpf 1.1 (Debian 12) has no BPF_UPROBE: BPF_KPROBE
 * reads the same pt_regs argument registers. */

/* int SSL_read(SSL *ssl, void *buf, int num) */
SEC("uprobe")
int BPF_KPROBE(ssl_read_enter, void *ssl, void *buf, int num)
{
	return enter(ssl, buf, num, 0, CALL_READ);
}

/* int SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int BPF_KPROBE(ssl_write_enter, void *ssl, const void *buf, int num)
{
	return enter(ssl, (void *)buf, num, 0, CALL_WRITE);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int BPF_KPROBE(ssl_read_ex_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return enter(ssl, buf, num, readbytes, CALL_READ_EX);
}

/* int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written) */
SEC("uprobe")
int BPF_KPROBE(ssl_write_ex_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return enter(ssl, (void *)buf, num, written, CALL_WRITE_EX);
}

/* int SSL_do_handshake(SSL *s) */
SEC("uprobe")
int BPF_KPROBE(ssl_handshake_enter, void *ssl)
{
	return enter(ssl, 0, 0, 0, CALL_HANDSHAKE);
}

/* One return probe serves every function: the entry recorded the kind. */
SEC("uretprobe")
int BPF_KRETPROBE(ssl_leave, long ret)
{
	/* SSL_read/SSL_write return int: sign-extend the low 32 bits of rax */
	return leave((long)(int)ret);
}

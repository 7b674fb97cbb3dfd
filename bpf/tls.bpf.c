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
 *     the call's buffer begins). SSL_read: the record is found among the
 *     records read from the socket (struct tls_recs below: every socket
 *     read inside an SSL call has its record headers parsed, the end of
 *     each application_data record queued), so that OpenSSL's read_ahead
 *     (nginx sets it: one socket read takes several records) names each
 *     read by its own record, not by the last one read. Where the record
 *     cannot be told (rules at tls_recs), and on a connection whose
 *     handshake was not seen (older than the tracing) until a socket read
 *     begins with a record header, the read carries span_msg.seq_unknown
 *     (seq 0), never a guess. HTTP/2's frames get the call's seq + their
 *     offset in it (ext/h2trace.pyx).
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
#include "include/syscall_io.bpf.h"
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

/* trace_spans: the TLS records read on a connection, to name each
 * SSL_read by the end of the record its plaintext came from.
 *
 * Every socket read inside an SSL call (tls_sock_recv) has the record
 * headers in the bytes it read parsed (5 bytes: type, version, length; a
 * header or body may straddle reads: `need`, `hdr`), and the end (TCP seq)
 * of each application_data record queued. Other outer types (handshake,
 * alert, change_cipher_spec) carry no application data and are not
 * queued. What OpenSSL does (ssl3_read_bytes, ssl3_read_n; OpenSSL 1.1.1
 * and 3.x without pipelining, which is off unless an engine asks) makes
 * the rest a deduction:
 *   1. it reads from the socket only when the next record it needs is not
 *      whole in its buffer, so at a socket read every queued record that
 *      ended before the read's first byte was consumed (popped);
 *   2. an SSL_read returns bytes of one record, the oldest one still
 *      holding application data, whole records only (ended in what was
 *      read: its end <= copied_seq);
 *   3. an SSL_read that returns fewer bytes than asked ended its record.
 * Without read_ahead (clients: curl, Python) OpenSSL reads no further than
 * the record it needs, so one queued record is whole when SSL_read returns:
 * that one. With read_ahead several are whole, and TLS 1.3 hides records
 * without application data behind the outer type application_data (the
 * peer's encrypted Finished when it came with the first request in one
 * read, a NewSessionTicket, a KeyUpdate): then the record is the first one
 * whose plaintext can hold the read, plaintext = length - the per-record
 * overhead (AEAD tag 16 + inner type 1 in TLS 1.3, 8 explicit nonce + 16
 * tag for TLS 1.2 AES-GCM/CCM, 16 for ChaCha20-Poly1305): equal to its
 * offset + the bytes read when the read ended the record, at least that
 * when it filled its buffer. The overhead is learned from the first read
 * that ended a record which was the only whole one (`ovh`); until then
 * any of 16, 17, 24 is allowed, and the choice must be the only record
 * that fits. Not told, so seq_unknown until the next socket read inside an
 * SSL call (rule 1 makes the queue exact again: `lost`): several records
 * fit and the overhead is not known (or varies: CBC suites, padding), none
 * fits, the queue overflowed (more than TLS_RECS application_data records
 * in OpenSSL's buffer). Known residue: with the overhead known, a TLS 1.3
 * post-handshake message (ticket, KeyUpdate) that reached the socket
 * together with application records, in front of them, and whose
 * plaintext happens to fit the read exactly, would be taken for its record.
 *
 * A connection whose handshake was not seen (older than the tracing, or
 * its handshake inside SSL_read/SSL_write) has no framing (`sync` 0) until
 * a socket read inside an SSL call begins with an application_data header
 * (17 03 03, length 16..2^14+2048) followed by valid headers only: ciphertext
 * read from inside a record looks so about once in 6*10^7 reads. A header
 * that is not one (a socket read the probes missed) drops the framing the
 * same way. Entries go at tcp_destroy_sock. */
#define TLS_RECS 16 /* queued records (a power of two) */
#define TLS_REC_MAX (16384 + 2048) /* longest ciphertext record (RFC 5246 6.2.3) */
#define TLS_HDRS_PER_READ 1024     /* headers parsed per socket read (bpf_loop) */
#define TLS_OVH_VARIES 0xff        /* tls_recs.ovh: records disagreed (CBC, padding) */
#define TLS_APPLICATION_DATA 23

struct tls_recs {
	__u32 end[TLS_RECS]; /* TCP seq just past each queued application_data record */
	__u16 len[TLS_RECS]; /* its length (after the header) */
	__u32 head, tail;    /* the queue: [head, tail), indices mod TLS_RECS */
	__u32 taken;         /* plaintext bytes SSL_reads returned of the head record */
	__u32 need;          /* body bytes of the record being read not read yet */
	__u16 cur_len;       /* that record's length */
	__u8 hdr[10];        /* a header split across reads: its first hdr_got bytes
	                      * (room past the 5: the verifier's bound of a split read) */
	__u8 hdr_got;
	__u8 cur_app;        /* that record is application_data */
	__u8 sync;           /* the framing is known (need, hdr_got) */
	__u8 lost;           /* the queue is not exact until the next socket read */
	__u8 ovh;            /* per-record overhead learned (0: not yet; TLS_OVH_VARIES) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct sock * */
	__type(value, struct tls_recs);
} tls_recs SEC(".maps");

DROP_COUNTERS(drops, TLS_DROP_MAX);
HTTP_OVERFLOW_HEADS(tls_heads)

#define TLS_OUT(sc) {.ring = &events, .drops = &drops, .heads = &tls_heads, .unqueried = &(sc)->h.unqueried, \
		     .wake_bytes = wakeup_bytes, .source = HTTP_SRC_SSL}

HTTP_IDLE_FLUSH(tls_conns, scratch, tls_scratch, TLS_OUT)

/* A tls_recs entry for the socket, made with `sync` (1: at the handshake,
 * the framing starts with its first socket read; 0: older than the
 * tracing). NULL, counted, when the map cannot take it. */
static __always_inline struct tls_recs *recs_new(__u64 sk, __u8 sync)
{
	struct tls_recs init = {.sync = sync};
	/* a miss of BPF_NOEXIST is another CPU that made it meanwhile */
	bpf_map_update_elem(&tls_recs, &sk, &init, BPF_NOEXIST);
	struct tls_recs *st = bpf_map_lookup_elem(&tls_recs, &sk);
	if (!st)
		count_drop(&drops, TLS_DROP_SPAN_CONNS);
	return st;
}

static __always_inline void recs_push(struct tls_recs *st, __u32 end, __u32 len)
{
	if (st->tail - st->head >= TLS_RECS) {
		st->lost = 1; /* more than the queue holds: not exact until the next read */
		return;
	}
	__u32 i = st->tail & (TLS_RECS - 1);
	st->end[i] = end;
	st->len[i] = len;
	st->tail++;
}

/* bpf_loop's state: one socket read's bytes, parsed header by header */
struct recs_parse {
	__u64 sk;    /* tls_recs' key */
	__u64 buf;   /* the user buffer the read filled */
	__u32 pos;   /* bytes of it parsed */
	__u32 ret;   /* bytes read */
	__u32 start; /* TCP seq of its first byte */
};

/* One step: the rest of the current record's body, then the next header
 * (or what of it the read holds). 1 ends the loop. */
static long recs_parse_cb(__u32 i, void *ctx)
{
	struct recs_parse *x = ctx;
	/* looked up again: a map value pointer does not survive the trip
	 * through the loop's context for the verifier */
	struct tls_recs *st = bpf_map_lookup_elem(&tls_recs, &x->sk);
	if (!st || !st->sync || x->pos >= x->ret)
		return 1;
	__u32 avail = x->ret - x->pos;
	if (st->need) {
		__u32 take = st->need < avail ? st->need : avail;
		st->need -= take;
		x->pos += take;
		avail -= take;
		if (!avail)
			return 1;
	}
	__u32 got = st->hdr_got;
	if (got > 4) {
		st->sync = 0;
		return 1;
	}
	__u32 want = 5 - got;
	if (want > avail)
		want = avail; /* the header goes on in the next read */
	/* the size as a 64-bit value past a barrier, bounded where the
	 * verifier sees it (clang would pass the unbounded register) */
	__u64 size = want;
	asm volatile("" : "+r"(size));
	if (size > 5 || bpf_probe_read_user(st->hdr + got, size, (void *)(x->buf + x->pos))) {
		st->sync = 0;
		return 1;
	}
	x->pos += want;
	if (got + want < 5) {
		st->hdr_got = got + want;
		return 1;
	}
	st->hdr_got = 0;
	__u8 type = st->hdr[0];
	__u32 len = ((__u32)st->hdr[3] << 8) | st->hdr[4];
	/* change_cipher_spec, alert, handshake, application_data, heartbeat;
	 * SSL 3.0 to TLS 1.3 all say major version 3 */
	if (type < 20 || type > 24 || st->hdr[1] != 3 || len > TLS_REC_MAX) {
		st->sync = 0; /* not a header: the framing is lost */
		return 1;
	}
	st->cur_app = type == TLS_APPLICATION_DATA;
	if (st->cur_app && len)
		recs_push(st, x->start + x->pos + len, len);
	st->need = len;
	st->cur_len = len;
	return x->pos >= x->ret;
}

/* A socket read of `ret` bytes inside an SSL call on sk (trace_spans):
 * rule 1 of tls_recs, then its record headers. */
static __always_inline void recs_read(struct sock *sk, int ret)
{
	if (!tcp_stream(sk))
		return;
	__u64 key = (__u64)sk;
	struct tls_recs *st = bpf_map_lookup_elem(&tls_recs, &key);
	if (!st)
		st = recs_new(key, 0); /* no handshake seen: older than the tracing */
	if (!st)
		return;
	struct syscall_io io = {};
	if (syscall_io_get(&io) != SYSIO_BUF) {
		/* OpenSSL's socket BIO reads with read(), curl's with recv():
		 * anything else (readv, recvmsg, io_uring) is not parsed */
		st->sync = 0;
		return;
	}
	__u32 start = KERNEL_CAST(struct tcp_sock, sk)->copied_seq - (__u32)ret;
	if (st->lost) {
		/* every whole record was consumed (rule 1): the queue is the
		 * record this read goes on with, if any */
		st->head = st->tail;
		st->taken = 0;
		st->lost = 0;
		if (st->sync && st->need && st->cur_app && !st->hdr_got)
			recs_push(st, start + st->need, st->cur_len);
	} else {
		for (int k = 0; k < TLS_RECS; k++) {
			if (st->head == st->tail || (__s32)(st->end[st->head & (TLS_RECS - 1)] - start) > 0)
				break;
			st->head++;
			st->taken = 0;
		}
	}
	if (!st->sync) {
		__u8 h[5];
		if (ret < 5 || bpf_probe_read_user(h, sizeof(h), (void *)io.ptr))
			return;
		__u32 len = ((__u32)h[3] << 8) | h[4];
		if (h[0] != TLS_APPLICATION_DATA || h[1] != 3 || h[2] != 3 || len < 16 || len > TLS_REC_MAX)
			return;
		/* a record starts here (tls_recs: the chance of a false start) */
		st->sync = 1;
		st->need = 0;
		st->hdr_got = 0;
		st->head = st->tail;
		st->taken = 0;
		st->lost = 0;
	}
	struct recs_parse x = {.sk = key, .buf = io.ptr, .ret = ret, .start = start};
	bpf_loop(TLS_HDRS_PER_READ, recs_parse_cb, &x, 0);
	if (x.pos < x.ret)
		st->sync = 0; /* more headers than parsed, or not a header */
}

/* Can a record of `len` bytes have given a read of n bytes at plaintext
 * offset off (ended: the read ended the record), with the overhead ovh
 * (tls_recs)? */
static __always_inline int recs_fits(__u32 len, __u32 off, __u32 n, __u32 ended, __u8 ovh)
{
	__u32 used = off + n;
	if (ovh == 16 || ovh == 17 || ovh == 24)
		return ended ? len == used + ovh : len >= used + ovh;
	if (!ovh && ended)
		return len == used + 16 || len == used + 17 || len == used + 24;
	return len >= used + 16;
}

/* bpf_loop's state: the whole records of the queue, and those that fit */
struct recs_scan {
	__u64 sk;      /* tls_recs' key */
	__u32 read_to; /* copied_seq: records ending there or before are whole */
	__u32 n, ended;
	__u32 whole;   /* whole records from the head */
	__u32 fits;    /* of them, those that can have given the read */
	__u32 at, off; /* the first of those, its offset */
};

static long recs_scan_cb(__u32 k, void *ctx)
{
	struct recs_scan *x = ctx;
	/* looked up again (recs_parse_cb says why) */
	struct tls_recs *st = bpf_map_lookup_elem(&tls_recs, &x->sk);
	if (!st)
		return 1;
	__u32 i = st->head + k;
	if (i == st->tail || (__s32)(st->end[i & (TLS_RECS - 1)] - x->read_to) > 0)
		return 1; /* rule 2: not whole yet */
	__u32 o = k ? 0 : st->taken;
	x->whole++;
	if (recs_fits(st->len[i & (TLS_RECS - 1)], o, x->n, x->ended, st->ovh)) {
		if (!x->fits) {
			x->at = i;
			x->off = o;
		}
		x->fits++;
	}
	return 0;
}

/* An SSL_read that returned n bytes into a buffer of num on sk: 1 and
 * *seq (the end of their record + their offset in its plaintext) when
 * its record is known (tls_recs), else 0. Consumes the queue as OpenSSL
 * did. */
static __always_inline int recs_seq(struct sock *sk, __u32 n, __u32 num, __u32 *seq)
{
	__u64 key = (__u64)sk;
	struct tls_recs *st = bpf_map_lookup_elem(&tls_recs, &key);
	if (!st || !st->sync || st->lost)
		return 0;
	struct recs_scan x = {.sk = key, .read_to = KERNEL_CAST(struct tcp_sock, sk)->copied_seq, .n = n,
			      .ended = n < num};
	/* a loop of its own: unrolled, the verifier's paths through the
	 * records' cases multiply */
	bpf_loop(TLS_RECS, recs_scan_cb, &x, 0);
	__u32 head = st->head, whole = x.whole, fits = x.fits, at = x.at, off = x.off, ended = x.ended;
	if (whole == 1) {
		at = head; /* the only record it can be */
		off = st->taken;
	} else if (!whole || !fits || (fits > 1 && (!st->ovh || st->ovh == TLS_OVH_VARIES))) {
		st->lost = 1;
		return 0;
	}
	__u32 idx = at & (TLS_RECS - 1);
	__u32 len = st->len[idx];
	*seq = st->end[idx] + off;
	st->head = at;
	st->taken = off + n;
	if (ended) {
		/* rule 3: the record is done; its overhead is the connection's */
		__u32 obs = len - st->taken;
		__u8 o = len >= st->taken && (obs == 16 || obs == 17 || obs == 24) ? obs : TLS_OVH_VARIES;
		st->ovh = !st->ovh || st->ovh == o ? o : TLS_OVH_VARIES;
		st->head = at + 1;
		st->taken = 0;
	}
	return 1;
}

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
	struct trace_conn *tc = trace_conn_get((__u64)sk, &drops, TLS_DROP_SPAN_CONNS);
	if (tc)
		tc->ignored = 1;
}

/* trace_spans: a handshake on the socket: its plaintext's entry is made
 * now, and its tls_recs entry with the framing known (the first socket
 * read of the handshake starts a record). Entries made later, at a data
 * call or a socket read, are of a connection older than the tracing.
 * enter() took traced processes only. + not |: the verifier allows no
 * bitwise operation on the typed pointer (bit 0 is clear: the same). */
static __always_inline void trace_handshake(struct sock *sk)
{
	if (!tcp_stream(sk))
		return;
	trace_conn_get((__u64)sk + TLS_SK_TAG, &drops, TLS_DROP_SPAN_CONNS);
	__u64 key = (__u64)sk;
	if (!bpf_map_lookup_elem(&tls_recs, &key))
		recs_new(key, 1);
}

/* A socket call on this thread: if the thread is inside an SSL call, the
 * socket is the SSL object's (then 1). */
static __always_inline int learn_sock(struct sock *sk, int is_send, int ret)
{
	struct ssl_call *c = this_call(0);
	if (!c || c->kind == CALL_NONE)
		return 0;
	if (trace_spans && is_send && !c->sent) {
		/* the first send of the call: its first record ends here */
		c->seq = KERNEL_CAST(struct tcp_sock, sk)->write_seq;
		c->sent = 1;
	}
	if (c->sk == (__u64)sk)
		return 1;
	c->sk = (__u64)sk;
	if (trace_spans && c->kind == CALL_HANDSHAKE)
		trace_handshake(sk);
	struct ssl_key k = {.ssl = c->ssl, .tgid = bpf_get_current_pid_tgid() >> 32};
	__u64 *known = bpf_map_lookup_elem(&ssl_socks, &k);
	if (known && *known == (__u64)sk)
		return 1; /* the usual case: a lookup is cheaper than an update */
	__u64 v = (__u64)sk;
	if (bpf_map_update_elem(&ssl_socks, &k, &v, BPF_ANY))
		count_drop(&drops, TLS_DROP_SOCKS);
	if (trace_spans)
		trace_ignore_cipher(sk);
	return 1;
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
	/* (a peek's bytes stay queued: read again) */
	if (learn_sock(sk, 0, ret) && trace_spans && ret > 0 && !(flags & MSG_PEEK))
		recs_read(sk, ret);
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
	/* a read: its record (every read: each consumes the queue) */
	__u32 rseq = 0;
	__u8 unknown = op == TRACE_OP_RECV && !recs_seq(sk, n, c->num, &rseq);
	__u64 key = (__u64)sk | TLS_SK_TAG;
	__u64 now = bpf_ktime_get_ns();
	int due, start;
	struct sock_tuple t = {};
	struct span_scratch *s;
	struct trace_conn *tc = span_call_begin(sk, key, op, &due, &start, &t, &s, &drops, TLS_DROP_SPAN_CONNS);
	if (!tc)
		return;
	if (s) {
		const struct tcp_sock *tp = KERNEL_CAST(struct tcp_sock, sk);
		__u32 seq = op == TRACE_OP_RECV ? rseq : c->sent ? c->seq : tp->write_seq;
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
		__u64 key = (__u64)sk;
		bpf_map_delete_elem(&tls_recs, &key);
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

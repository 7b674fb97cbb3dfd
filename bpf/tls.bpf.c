// SPDX-License-Identifier: GPL-2.0
/* httpflow-tls: the plaintext of OpenSSL connections, without kprobes.
 *
 * Hooks:
 *   uprobe/uretprobe SSL_read, SSL_write, SSL_read_ex, SSL_write_ex
 *       (libssl.so.3 and libssl.so.1.1; user space attaches them once per
 *       library file, on ssl_read_internal/ssl_write_internal with the _ex
 *       programs where it can: dkebpf/plugins/tls_probes.py says why): the
 *       entry saves the SSL object and the plaintext buffer per thread, the
 *       return copies the first L7_PAYLOAD_MAX bytes of what was really
 *       read or written into a struct l7_event
 *   uprobe/uretprobe SSL_do_handshake (SSL_connect and SSL_accept call it):
 *       only to learn the socket of an SSL object before its first read
 *   tp_btf/sock_send_length, tp_btf/sock_recv_length: the socket. OpenSSL
 *       moves ciphertext through its BIO with write/send/read/recv on the
 *       same thread while inside SSL_*; net/socket.c fires these two
 *       tracepoints with the struct sock * for every such call on a socket
 *       (sock_sendmsg_nosec / sock_recvmsg_nosec). A thread inside an SSL
 *       call that touches a socket thus names the SSL object's socket, which
 *       is remembered per (process, SSL *) for later calls that are served
 *       from OpenSSL's own buffer and make no socket call at all.
 *   tp_btf/tcp_destroy_sock: the end of a connection that carried HTTP:
 *       an L7_OP_CLOSE record with its final plaintext byte counters.
 *
 * The socket tracepoints fire only for socket I/O, so the cost outside TLS
 * is one hash lookup per socket call; syscall tracepoints on read/write
 * would fire for every file and pipe as well.
 *
 * Records follow bpf/http.bpf.c's scheme (include/http_msg.bpf.h): one record
 * per HTTP/1.x message start, the plaintext bytes of every call counted in
 * the connection's struct http_conn (`tls_conns`, keyed by struct sock *),
 * so sizes and latency come out right without a record per chunk. The
 * ciphertext on the same socket never looks like HTTP to bpf/http.bpf.c,
 * so each request is reported once, from here.
 *
 * A data call whose socket is still unknown is dropped and counted
 * (TLS_DROP_NO_SOCK): neither its tags nor its counters have a connection.
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
#include "include/tls.h"
#include "include/ring_wake.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* knobs, set by user space between open and load */
const volatile __u8 ipv6_disabled = 0;
/* the collector's own TLS (e.g. an https DataKit address) is not reported */
const volatile __u32 self_tgid = 0;
/* wake the reader once this much waits in the ring (see submit_flags) */
const volatile __u32 wakeup_bytes = 1 << 19;

#include "include/sock_tuple.bpf.h" /* uses ipv6_disabled */

/* ssl_call.kind */
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
	__u64 ts_ns; /* entry time */
	__u8 kind;   /* CALL_* */
};

/* By thread id. LRU: a thread killed inside a blocking SSL_read never
 * returns and leaves its entry behind; the oldest such entries are the ones
 * evicted when the map is full, not calls in progress. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct ssl_call);
} ssl_calls SEC(".maps");

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

/* Plaintext counters of connections that carried an HTTP message (the
 * struct of bpf/http.bpf.c's http_conns, read by user space the same way). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct http_conn);
} tls_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 25); /* resized by user space (RING_BYTES) */
} events SEC(".maps");

struct tls_scratch {
	struct l7_event ev;
	__u32 unqueried; /* include/ring_wake.bpf.h */
};

/* The record under construction: it goes on the ring cut after its valid
 * payload (include/l7.h, L7_EVENT_MIN_SIZE), which a fixed-size reservation
 * cannot do; too big for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_scratch);
} scratch SEC(".maps");

DROP_COUNTERS(drops, TLS_DROP_MAX);

/* Batch the reader's wakeups: by default a commit wakes the reader whenever
 * it had caught up (kernel/bpf/ringbuf.c, bpf_ringbuf_commit), i.e. once per
 * record when records come slower than it drains, one trip through the
 * collector's event loop each. A reader that is not asleep still sees the
 * records (the ring's poll reports any available data), and the interval's
 * collect takes everything, so only the wakeup is deferred (ring_wake.bpf.h:
 * without a ring query per record). */
static __always_inline __u64 submit_flags(struct tls_scratch *s, __u32 size)
{
	return ring_wake_flag(&events, &s->unqueried, size, wakeup_bytes);
}

static __always_inline int enter(void *ssl, void *buf, void *lenp, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (self_tgid && (id >> 32) == self_tgid)
		return 0;
	__u32 tid = (__u32)id;
	struct ssl_call c = {
		.ssl = (__u64)ssl,
		.buf = (__u64)buf,
		.lenp = (__u64)lenp,
		.ts_ns = bpf_ktime_get_ns(),
		.kind = kind,
	};
	if (bpf_map_update_elem(&ssl_calls, &tid, &c, BPF_ANY))
		count_drop(&drops, TLS_DROP_CALLS);
	return 0;
}

/* A socket call on this thread: if the thread is inside an SSL call, the
 * socket is the SSL object's. */
static __always_inline void learn_sock(struct sock *sk)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct ssl_call *c = bpf_map_lookup_elem(&ssl_calls, &tid);
	if (!c || c->sk == (__u64)sk)
		return;
	c->sk = (__u64)sk;
	struct ssl_key k = {.ssl = c->ssl, .tgid = id >> 32};
	__u64 v = (__u64)sk;
	if (bpf_map_update_elem(&ssl_socks, &k, &v, BPF_ANY))
		count_drop(&drops, TLS_DROP_SOCKS);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tls_sock_send, struct sock *sk, int ret, int flags)
{
	learn_sock(sk);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tls_sock_recv, struct sock *sk, int ret, int flags)
{
	learn_sock(sk);
	return 0;
}

static __always_inline void fill_tuple(struct l7_event *ev, const struct sock_tuple *t)
{
	__builtin_memcpy(ev->laddr, t->laddr, 16);
	__builtin_memcpy(ev->raddr, t->raddr, 16);
	ev->lport = t->lport;
	ev->rport = t->rport;
	ev->family = t->family;
	ev->proto = t->proto;
	ev->source = L7_SRC_SSL;
	ev->flags = L7_F_COUNTED;
}

static __always_inline int leave(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct ssl_call *cp = bpf_map_lookup_elem(&ssl_calls, &tid);
	if (!cp)
		return 0;
	struct ssl_call c = *cp;
	bpf_map_delete_elem(&ssl_calls, &tid);

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

	__u8 op = (c.kind == CALL_READ || c.kind == CALL_READ_EX) ? L7_OP_RECV : L7_OP_SEND;
	/* same clock convention as the syscall source: send at entry, recv at exit */
	__u64 ts = op == L7_OP_SEND ? c.ts_ns : bpf_ktime_get_ns();
	struct http_conn *hc = bpf_map_lookup_elem(&tls_conns, &sk);
	__u8 head[8] = {};
	if (bytes < (__s64)sizeof(head) || bpf_probe_read_user(head, sizeof(head), (void *)c.buf) ||
	    !looks_like_http(head)) {
		if (hc) /* a continuation: counted, no record */
			count_bytes(hc, op, bytes, ts);
		return 0;
	}

	/* a message starts */
	struct sock_tuple t = {};
	if (!read_tuple((const struct sock *)sk, &t) || t.proto != IPPROTO_TCP) {
		count_drop(&drops, TLS_DROP_NOT_TCP);
		return 0;
	}
	if (!hc) {
		/* the side that sends the first request is the client */
		int is_request = head[0] != 'H' || head[1] != 'T';
		struct http_conn init = {.pid = id >> 32};
		init.direction = (is_request == (op == L7_OP_SEND)) ? NF_DIR_OUTGOING : NF_DIR_INCOMING;
		bpf_map_update_elem(&tls_conns, &sk, &init, BPF_NOEXIST);
		hc = bpf_map_lookup_elem(&tls_conns, &sk);
		if (!hc) {
			/* LRU: fails on memory pressure or a race with its eviction */
			count_drop(&drops, TLS_DROP_CONNS);
			return 0;
		}
	}
	struct http_conn before = *hc;
	count_bytes(hc, op, bytes, ts);

	__u32 zero = 0;
	struct tls_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	struct l7_event *ev = &s->ev;
	fill_tuple(ev, &t);
	ev->ts_ns = ts;
	ev->sk = sk;
	ev->pid = id >> 32;
	ev->tid = tid;
	ev->bytes = bytes > 0xffffffffLL ? 0xffffffffU : (__u32)bytes;
	ev->op = op;
	ev->direction = before.direction;
	ev->sk_sent = before.sent;
	ev->sk_recv = before.recv;
	ev->ts_other_ns = op == L7_OP_SEND ? before.ts_last_recv : before.ts_last_send;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	/* the scratch record is reused: a shorter name must not keep the tail
	 * of the previous one (the string read does not pad) */
	__builtin_memset(ev->comm, 0, NF_COMM_LEN);
	BPF_CORE_READ_STR_INTO(&ev->comm, task, group_leader, comm);

	__u32 cap = bytes < L7_PAYLOAD_MAX ? (__u32)bytes : L7_PAYLOAD_MAX;
	asm volatile("" : "+r"(cap)); /* keep the bound below for the verifier */
	if (cap > L7_PAYLOAD_MAX)
		cap = L7_PAYLOAD_MAX;
	/* after a read the buffer holds what SSL_read returned; after a write
	 * it still holds what the caller passed in */
	if (bpf_probe_read_user(ev->payload, cap, (void *)c.buf)) {
		cap = 0;
		count_drop(&drops, TLS_DROP_PAYLOAD);
	}
	ev->cap_len = cap;
	if (bpf_ringbuf_output(&events, ev, L7_EVENT_MIN_SIZE + cap, submit_flags(s, L7_EVENT_MIN_SIZE + cap)))
		count_drop(&drops, TLS_DROP_RING);
	return 0;
}

/* The end of a TCP socket (fires once, after the owner's last read; see
 * netflow.bpf.c): final plaintext counters of a connection that carried
 * HTTP, which close its last response in user space. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tls_sock_destroy, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct http_conn *hc = bpf_map_lookup_elem(&tls_conns, &key);
	if (!hc)
		return 0;
	struct sock_tuple t = {};
	if (read_tuple(sk, &t)) {
		__u32 zero = 0;
		struct tls_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
		struct l7_event *ev = s ? bpf_ringbuf_reserve(&events, L7_EVENT_MIN_SIZE, 0) : 0;
		if (ev) {
			fill_tuple(ev, &t);
			ev->ts_ns = bpf_ktime_get_ns();
			ev->sk = key;
			ev->pid = hc->pid;
			ev->tid = 0;
			ev->bytes = 0;
			ev->cap_len = 0;
			ev->op = L7_OP_CLOSE;
			ev->direction = hc->direction;
			ev->comm[0] = 0; /* softirq context possibly: no owner task here */
			ev->sk_sent = hc->sent;
			ev->sk_recv = hc->recv;
			ev->ts_other_ns = 0;
			bpf_ringbuf_submit(ev, submit_flags(s, L7_EVENT_MIN_SIZE));
		} else {
			count_drop(&drops, TLS_DROP_RING);
		}
	}
	bpf_map_delete_elem(&tls_conns, &key);
	return 0;
}

/* The entry programs. libbpf 1.1 (Debian 12) has no BPF_UPROBE: BPF_KPROBE
 * reads the same pt_regs argument registers. */

/* int SSL_read(SSL *ssl, void *buf, int num) */
SEC("uprobe")
int BPF_KPROBE(ssl_read_enter, void *ssl, void *buf, int num)
{
	return enter(ssl, buf, 0, CALL_READ);
}

/* int SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int BPF_KPROBE(ssl_write_enter, void *ssl, const void *buf, int num)
{
	return enter(ssl, (void *)buf, 0, CALL_WRITE);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int BPF_KPROBE(ssl_read_ex_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return enter(ssl, buf, readbytes, CALL_READ_EX);
}

/* int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written) */
SEC("uprobe")
int BPF_KPROBE(ssl_write_ex_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return enter(ssl, (void *)buf, written, CALL_WRITE_EX);
}

/* int SSL_do_handshake(SSL *s) */
SEC("uprobe")
int BPF_KPROBE(ssl_handshake_enter, void *ssl)
{
	return enter(ssl, 0, 0, CALL_HANDSHAKE);
}

/* One return probe serves every function: the entry recorded the kind. */
SEC("uretprobe")
int BPF_KRETPROBE(ssl_leave, long ret)
{
	/* SSL_read/SSL_write return int: sign-extend the low 32 bits of rax */
	return leave((long)(int)ret);
}

/* HTTP/1.x exchanges paired in the kernel (bpf/http.bpf.c: socket calls
 * seen at tp_btf/sock_{send,recv}_length; bpf/tls.bpf.c: OpenSSL
 * plaintext), shared by the BPF programs (include/http_msg.bpf.h does the
 * pairing) and user space (ext/records.pyx builds its dtypes from these).
 *
 * Per socket that carried an HTTP/1.x message, a struct http_conn holds the
 * byte counters and a small FIFO of requests waiting for (or getting) their
 * response. When an exchange is finished, one struct http_exchange goes to
 * the ring: the request's first bytes (user space parses method, path and
 * version from them), status, latency, bytes each way, tuple, process.
 * An exchange is finished by the next response on the connection, by the
 * socket's end, or, when the connection stays quiet, by the idle flush that
 * user space triggers each interval (HTTP_X_SETTLED). */
#ifndef DKEBPF_HTTP_H
#define DKEBPF_HTTP_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "netflow.h"

/* Bytes of a request kept and reported: its request line (a path that
 * reaches this limit is reported with truncated=true) and first headers. */
#define HTTP_HEAD_MAX 256
/* Bytes of a call looked at for pipelined messages after the first one. */
#define HTTP_SCAN_MAX 512
/* Requests per connection waiting for their responses (pipelining depth);
 * a request beyond it is counted (HTTP_DROP_FIFO_FULL), not paired. */
#define HTTP_FIFO 4
/* Heads kept in the connection's entry: keep-alive needs two (the answered
 * request, reported when the next response starts, and the next request).
 * A request that finds HTTP_HEADS_INLINE waiting (pipelining) keeps its
 * head in the program's overflow map instead, while it waits. So the entry
 * that every HTTP connection allocates and frees is ~0.75 KB, not ~1.3 KB:
 * the kernel's allocator pays per connection more the bigger it is. */
#define HTTP_HEADS_INLINE 2

/* Per-CPU counters of what was not recorded or not paired, indexes of the
 * programs' drops map (shared by http.bpf.c and tls.bpf.c, whose own
 * counters follow from HTTP_DROP_MAX on, include/tls.h). */
#define HTTP_DROP_RING 0        /* ring buffer full: a finished exchange was lost */
#define HTTP_DROP_CONNS 1       /* connection map full: a connection went unwatched (or the
                                 * overflow map of heads: a pipelined request's record
                                 * came without its head) */
#define HTTP_DROP_READ 2        /* a message start's bytes could not be read */
#define HTTP_DROP_NOT_COVERED 3 /* a socket call whose buffer the task's registers do
                                 * not describe (io_uring, sendmmsg/recvmmsg, kernel
                                 * threads, another syscall): payload not looked at */
#define HTTP_DROP_FIFO_FULL 4   /* a request while HTTP_FIFO were waiting: not paired */
#define HTTP_DROP_UNMATCHED 5   /* a response with no request waiting (sent before we watched) */
#define HTTP_DROP_UNANSWERED 6  /* requests still waiting when their connection ended */
#define HTTP_DROP_MAX 7

/* http_conn.state: where the oldest waiting request's response is */
#define HTTP_RESP_NONE 0    /* not started */
#define HTTP_RESP_INTERIM 1 /* a 1xx (not 101) came: its bytes count, the final one follows */
#define HTTP_RESP_FINAL 2   /* the final response started: finished by the next one or the end */
#define HTTP_RESP_TAKEN 3   /* reported (by the idle flush): the owner only dequeues it */
/* The idle flush is filling the record of request `seq`: state is
 * HTTP_RESP_REPORTING | (__u64)seq << 32. The owner that comes meanwhile
 * takes the report over (it may go on to overwrite what the flush reads),
 * and the flush then discards its record (include/http_msg.bpf.h). */
#define HTTP_RESP_REPORTING 4
#define HTTP_RESP_MASK 0xff

/* http_exchange.flags */
#define HTTP_X_CLOSED 1  /* finished by the connection's end */
#define HTTP_X_SETTLED 2 /* finished by the idle flush: response bytes as of then */

/* http_exchange.source */
#define HTTP_SRC_SYSCALL 1
#define HTTP_SRC_SSL 2

/* l7 ops: a call's direction */
#define HTTP_OP_SEND 1
#define HTTP_OP_RECV 2

/* A user-space send of exactly this many bytes on an AF_UNIX socket by
 * the collector itself (self_tgid) makes the programs report the exchanges
 * whose response has been quiet for settle_ns (dkebpf/plugins/httpflow.py). */
#define HTTP_FLUSH_BYTES 13

/* http_req.head_at: where its head is */
#define HTTP_HEAD_INLINE 0   /* http_conn.heads[its sequence number % HTTP_HEADS_INLINE] */
#define HTTP_HEAD_OVERFLOW 1 /* the overflow map, by struct http_head_key */
#define HTTP_HEAD_LOST 2     /* the overflow map was full (counted): reported without it */

struct http_req {
	__u64 ts;  /* its first byte moved (bpf_ktime_get_ns) */
	__u64 pos; /* stream offset of its first byte (the sent or recv counter) */
	__u32 tid;
	__u16 head_len;
	__u8 head_at; /* HTTP_HEAD_* */
	__u8 _pad;
};

struct http_head {
	__u8 b[HTTP_HEAD_MAX];
};

/* Key of the overflow map of heads: the connection's and the request's
 * sequence number (the FIFO's tail when it came). */
struct http_head_key {
	__u64 sk;
	__u32 seq;
	__u32 _pad;
};

/* Value of the connection maps (http_conns, tls_conns), keyed by struct
 * sock * (u64). Counters start at the first message start. */
struct http_conn {
	__u64 sent;
	__u64 recv;
	__u64 ts_last_send; /* last call of each direction */
	__u64 ts_last_recv;
	__u64 ts_last;      /* last call either way: the idle flush's clock */
	/* the response to q[head % HTTP_FIFO] */
	__u64 resp_ts;      /* its final status line moved */
	__u64 resp_pos;     /* stream offset of its first byte (of the first interim one) */
	__u64 resp_req_ts;  /* the last request-way call before it */
	__u64 state;        /* HTTP_RESP_* (and a sequence number); claimed with a 64-bit
			     * cmpxchg (the idle flush races) */
	__u32 head;         /* FIFO: q[head % HTTP_FIFO] .. q[(tail - 1) % HTTP_FIFO] */
	__u32 tail;
	__u32 pid;          /* tgid that moved the first message */
	__u32 _pad0;
	__u16 status;
	__u8 resp_version;  /* 10, 11 */
	__u8 direction;     /* NF_DIR_*: outgoing when this side sent the first request */
	__u8 family;
	__u8 proto;
	__u16 lport;
	__u16 rport;
	__u16 _pad;
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[NF_COMM_LEN];
	struct http_req q[HTTP_FIFO];
	struct http_head heads[HTTP_HEADS_INLINE];
};

/* One finished request/response exchange (ring record). It may end right
 * after head_len bytes of head (HTTP_EXCHANGE_MIN_SIZE + head_len). */
struct http_exchange {
	__u64 sk;
	__u64 ts_req;      /* the request's first byte */
	__u64 ts_resp;     /* the final response's first byte */
	__u64 latency_ns;  /* final response's first byte - the request's last byte */
	__u64 req_bytes;   /* the request, body included */
	__u64 resp_bytes;  /* interim and final response, body included */
	__u8 laddr[16];    /* IPv4 in the first 4 bytes, like netflow */
	__u8 raddr[16];
	__u16 lport;       /* host byte order */
	__u16 rport;
	__u32 pid;         /* tgid */
	__u32 tid;         /* of the request's call */
	__u16 status;
	__u16 head_len;
	__u8 family;       /* 4 or 6 */
	__u8 proto;
	__u8 direction;    /* NF_DIR_* */
	__u8 source;       /* HTTP_SRC_* */
	__u8 resp_version; /* 10, 11 */
	__u8 flags;        /* HTTP_X_* */
	__u8 _pad[2];
	char comm[NF_COMM_LEN];
	__u8 head[HTTP_HEAD_MAX]; /* the request's first bytes */
};

#define HTTP_EXCHANGE_MIN_SIZE __builtin_offsetof(struct http_exchange, head)

#endif

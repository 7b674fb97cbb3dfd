/* Records and maps of bpf/trace.bpf.c (ebpf-trace) that user space reads:
 * struct span_msg (one message start) on the `events` ring (ext/trace.pyx builds the numpy
 * dtype from this struct), the per-process filter `trace_pids` and the drop
 * counter indices. */
#ifndef DKEBPF_TRACE_H
#define DKEBPF_TRACE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Payload bytes copied per message start: a request line with its headers
 * (traceparent and friends sit among them), a Redis command, a SQL text. */
#define TRACE_PAYLOAD_MAX 1024

/* Payload bytes kept of a message start that is an HTTP/1.x status line:
 * the span needs its status code (and version) only. */
#define TRACE_STATUS_KEEP 32

/* trace_event.op */
#define TRACE_OP_SEND 1  /* the first call of a run of sends on the socket */
#define TRACE_OP_RECV 2  /* the first call of a run of receives */
#define TRACE_OP_CLOSE 3 /* the socket ended: counters are its final totals */

/* span_msg.more: this record is not a message start but the second call
 * of a run whose first call moved fewer than TRACE_SHORT_START bytes: its
 * payload continues the start's (Go's net/http server reads one byte
 * ahead to notice a closed connection, so a request's first read is 1
 * byte and its request line comes with the second); or any later call of
 * a run on a connection that pipelines (trace_conn.whole: responses
 * written one call each). */
#define TRACE_SHORT_START 16

/* span_msg.more on an HTTP/2 connection (trace_conn.h2: the client preface
 * was seen): every call of a run is sent, not only its start, each with
 * its first TRACE_PAYLOAD_MAX bytes (frames of many streams interleave in
 * one direction; user space follows them per stream, ext/h2trace.pyx). */
#define TRACE_MORE_SHORT 1
#define TRACE_MORE_H2_CALL 2

/* iovecs of one writev/sendmsg copied into a payload past the first 4
 * (trace.bpf.c's TRACE_MAX_IOV, unrolled), with bpf_loop, on HTTP/2
 * connections and for message starts (gRPC writes each frame header and
 * body as its own iovec). */
#define TRACE_MAX_IOV_LOOP 124

/* trace_pids values (key: tgid) */
#define TRACE_PID_TRACED 1
#define TRACE_PID_EXCLUDED 2

/* index into the per-CPU `drops` array */
#define TRACE_DROP_RING 0  /* events ring full: a message start was lost */
#define TRACE_DROP_CONNS 1 /* trace_conns update failed */
#define TRACE_DROP_READ 2  /* the call's user buffer could not be read */
#define TRACE_DROP_PIDS 3  /* trace_pids full: a forked child is not followed */
#define TRACE_DROP_MAX 4

/* One message start: the first call of a run of calls in one direction on
 * a TCP socket of a traced process (a request or a response: which one is
 * for user space to tell, by protocol). The calls in between are only
 * counted (trace_conns); the counters and times of the run before this one
 * travel in this record, so user space knows where the previous message
 * ended without a record per call. */
struct span_msg {
	__u64 ts_ns;        /* bpf_ktime_get_ns() when the call had moved its data */
	__u64 sk;           /* struct sock * */
	__u64 sk_sent;      /* bytes sent on the socket before this call */
	__u64 sk_recv;      /* bytes received before this call */
	__u64 ts_last_send; /* the last send call before this one; 0 none */
	__u64 ts_last_recv; /* the last receive call before this one; 0 none */
	__u64 user;         /* 0 from the kernel; user space keeps the record's
	                     * thread_trace_id here while it is carried */
	__u8 laddr[16];     /* IPv4 in the first 4 bytes */
	__u8 raddr[16];
	__u32 pid;          /* tgid */
	__u32 tid;
	__u32 seq;          /* TCP sequence number of the first byte of this call:
	                     * send: write_seq - ret, receive: copied_seq - ret */
	__u32 bytes;        /* bytes the call moved */
	__u16 lport;        /* host byte order */
	__u16 rport;
	__u16 cap_len;      /* valid payload bytes */
	__u8 family;        /* 4 or 6 */
	__u8 op;            /* TRACE_OP_* */
	__u8 more;          /* TRACE_MORE_SHORT: continues the previous record's
	                     * payload; TRACE_MORE_H2_CALL: another call of the
	                     * run on an HTTP/2 connection (above) */
	__u8 seq_unknown;   /* 1: `seq` is not known (TLS plaintext read from
	                     * within a record whose start was not seen: a
	                     * connection older than the tracing: tls.bpf.c
	                     * tls_recs); user space reports no
	                     * sequence number from it */
	char comm[16];      /* the calling thread's name */
	char pcomm[16];     /* its process's name (the group leader's comm), read
	                     * here: a short-lived process may be gone, or have
	                     * exec'd, before user space looks at /proc */
	__u8 payload[TRACE_PAYLOAD_MAX];
};

#define SPAN_MSG_MIN_SIZE __builtin_offsetof(struct span_msg, payload)

/* Value of the `trace_conns` LRU map, keyed by struct sock * (| TLS_SK_TAG).
 * Written by the BPF programs only; user space reads it (born) and puts
 * its own word on a connection in `trace_flags`: a whole value written
 * back would overwrite what the kernel changed meanwhile (counters, run
 * state, h2) and whatever user space does not know of the value. */
struct trace_conn {
	__u64 sent;
	__u64 recv;
	__u64 ts_last_send;
	__u64 ts_last_recv;
	__u8 last_op; /* TRACE_OP_SEND / TRACE_OP_RECV of the current run */
	__u8 short_start; /* the run's first call was short: send the next one too */
	__u8 ignored;     /* its calls are only counted, no record but the close:
	                   * user space could not tell its protocol
	                   * (TRACE_FLAG_IGNORED, copied at a message start), or
	                   * tls.bpf.c saw an SSL call on it (its ciphertext) */
	__u8 h2;          /* the HTTP/2 client preface was seen: every call is sent */
	__u8 whole;       /* user space saw it pipeline (TRACE_FLAG_WHOLE, copied
	                   * at a message start): an HTTP/1.x response keeps its
	                   * payload, not only its status line (TRACE_STATUS_KEEP),
	                   * for the lengths of the responses in it */
	__u8 _pad[3];
	__u64 born;       /* bpf_ktime_get_ns() when the entry was made: which
	                   * socket at this address a trace_flags entry is for */
};

/* trace_flags.bits */
#define TRACE_FLAG_IGNORED 1 /* trace_conn.ignored */
#define TRACE_FLAG_WHOLE 2   /* trace_conn.whole */

/* Value of the `trace_flags` map (key: trace_conns' key): what user space
 * decided about a connection, written by user space only (TracePlugin).
 * The BPF programs read it at a message start and copy the bits into
 * their trace_conn when `born` is that entry's (else it was meant for an
 * earlier socket at the same address, closed before user space wrote it:
 * deleted, never applied); tcp_destroy_sock deletes it with the
 * connection's trace_conns entry. */
struct trace_flags {
	__u64 born; /* trace_conn.born of the connection meant */
	__u32 bits; /* TRACE_FLAG_* */
	__u32 _pad;
};

#endif

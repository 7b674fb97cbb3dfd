/* Layer-7 payload records shared by the BPF programs that capture socket
 * payloads (bpf/http.bpf.c: read/write/send/recv syscalls; bpf/tls.bpf.c:
 * OpenSSL SSL_read/SSL_write uprobes) and ext/ (Cython HTTP parsing).
 *
 * Both sources emit the same record on their ring buffer, so one user-space
 * path parses and pairs plaintext HTTP whatever it came from. The layout is
 * read into numpy with a dtype derived from this struct (ext/records.pyx).
 */
#ifndef DKEBPF_L7_H
#define DKEBPF_L7_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "netflow.h"

/* Bytes of each payload copied to user space: enough for an HTTP request
 * line with a long path plus a status line; a path that reaches this limit
 * is reported with truncated=true. */
#define L7_PAYLOAD_MAX 512

/* l7_event.op */
#define L7_OP_SEND 1 /* write/send/SSL_write: bytes leaving the local socket */
#define L7_OP_RECV 2 /* read/recv/SSL_read: bytes arriving */
#define L7_OP_CLOSE 3 /* the connection ended: sk_sent/sk_recv are its final
                       * totals, no payload (bytes, cap_len 0) */

/* l7_event.flags */
#define L7_F_COUNTED 1 /* sk_sent/sk_recv/ts_other_ns are kept by the source */

/* l7_event.source */
#define L7_SRC_SYSCALL 1
#define L7_SRC_SSL 2

struct l7_event {
	__u64 ts_ns;    /* bpf_ktime_get_ns(): send at syscall entry, recv at exit */
	__u64 sk;       /* struct sock * (same identity as nf_conn_key.sk) */
	__u8 laddr[16]; /* IPv4 in the first 4 bytes, like netflow */
	__u8 raddr[16];
	__u16 lport;    /* host byte order */
	__u16 rport;
	__u32 pid;      /* tgid */
	__u32 tid;
	__u32 bytes;    /* bytes the call moved (its return value) */
	__u16 cap_len;  /* valid bytes in payload (<= L7_PAYLOAD_MAX) */
	__u8 family;    /* 4 or 6 */
	__u8 proto;     /* 6 tcp */
	__u8 op;        /* L7_OP_* */
	__u8 source;    /* L7_SRC_* */
	__u8 direction; /* NF_DIR_* of the connection when known */
	__u8 flags;     /* L7_F_* */
	char comm[NF_COMM_LEN];
	/* Per-connection accounting, so that bytes per request/response and
	 * the time to first byte come out right without a record per chunk:
	 * a source that keeps them (L7_F_COUNTED) sends a record only where a
	 * message starts, and counts the calls in between in a map. A
	 * message's size is the difference of these counters between its
	 * start and the next message's start (or the close record). */
	__u64 sk_sent;     /* bytes sent on the connection before this call */
	__u64 sk_recv;     /* bytes received on the connection before this call */
	__u64 ts_other_ns; /* last call of the other op (send vs recv) before this
	                    * one: the last request byte for a response; 0 unknown */
	__u8 payload[L7_PAYLOAD_MAX];
};

/* A record on a ring may end right after cap_len payload bytes: its size
 * is at least L7_EVENT_MIN_SIZE (everything before the payload) and at most
 * sizeof(struct l7_event). Readers copy what there is into a full-size slot
 * (ext/libbpf.pyx RingReader(min_size=...)); payload bytes past cap_len are
 * then unspecified. */
#define L7_EVENT_MIN_SIZE __builtin_offsetof(struct l7_event, payload)

#endif

/* Maps of bpf/http.bpf.c that user space reads (the events themselves are
 * struct l7_event, include/l7.h). */
#ifndef DKEBPF_HTTP_H
#define DKEBPF_HTTP_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "netflow.h"

/* index into the per-CPU `http_drops` array map */
#define HTTP_DROP_RING 0  /* events ring buffer full: a message start was lost */
#define HTTP_DROP_CALLS 1 /* calls map full: a socket call went unseen */
#define HTTP_DROP_CONNS 2 /* http_conns map update failed */
#define HTTP_DROP_READ 3  /* the first bytes of a call's buffer could not be read */
#define HTTP_DROP_MAX 4

/* Value of the `http_conns` LRU map, keyed by struct sock * (u64): a TCP
 * socket that has carried an HTTP/1.x message start. Every call on it is
 * counted here, only message starts are sent as records. The tuple and the
 * process name are read once, when the socket enters the map. */
struct http_conn {
	__u64 sent;         /* bytes sent since the first message start */
	__u64 recv;
	__u64 ts_last_send; /* entry of the last send call */
	__u64 ts_last_recv; /* exit of the last recv call */
	__u32 pid;          /* tgid that sent or received the first message */
	__u8 direction;     /* NF_DIR_*: outgoing when this side sent the first request */
	__u8 family;
	__u8 proto;
	__u8 _pad;
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u32 _pad2;
	char comm[NF_COMM_LEN];
};

#endif

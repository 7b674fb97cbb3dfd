/* Records shared by bpf/netflow.bpf.c and ext/ (Cython).
 *
 * One definition of every layout: the BPF program writes these structs into
 * its maps and ring buffer, user space reads the same bytes into numpy
 * structured arrays whose dtypes are derived from sizeof/offsetof of these
 * structs (ext/records.pyx) and checked at import.
 */
#ifndef DKEBPF_NETFLOW_H
#define DKEBPF_NETFLOW_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define NF_COMM_LEN 16

/* direction, seen from the local socket */
#define NF_DIR_UNKNOWN 0
#define NF_DIR_OUTGOING 1
#define NF_DIR_INCOMING 2

/* nf_conn_stats.flags */
#define NF_F_ESTABLISHED 1 /* the TCP handshake completed while we watched */
#define NF_F_CLOSED 2      /* set only in closed-connection ring records */

/* index into the per-CPU `drops` array map */
#define NF_DROP_RING 0   /* closed-connection ring buffer full */
#define NF_DROP_CONNS 1  /* conns or tcp_flows hash map full: a flow went uncounted */
#define NF_DROP_BOUND 2  /* bound_ports map full */
#define NF_DROP_UDP_PEER 3  /* a datagram of an unconnected UDP socket whose
                             * peer no cgroup hook gave: not counted (see
                             * take_peer in netflow.bpf.c) */
#define NF_DROP_PEERS_MAP 4 /* udp_peers map update failed */
#define NF_DROP_MAX 5

/* Identity of a flow while it lives: the kernel socket, plus the remote end
 * for unconnected UDP sockets, which talk to many peers through one socket.
 * The socket is its cookie (bpf_get_socket_cookie), never reused while the
 * host runs; nf_conn_stats.ts_first tells instances of one key apart (a
 * flow taken out of the map idle that moves data again, a TCP socket that
 * connects again). The key of the `conns` map (UDP); the `tcp_flows` map
 * is keyed by the cookie alone and holds this key in its value, an
 * nf_conn_event (user space: plugins/netflow.py, flow_table). */
struct nf_conn_key {
	__u64 sk;       /* socket cookie */
	__u8 raddr[16]; /* IPv4 in the first 4 bytes; v4-mapped v6 folded to v4 */
	__u16 rport;    /* host byte order */
	__u16 _pad0;
	__u32 _pad1;
};

/* Cumulative statistics of one flow instance (never reset while it lives). */
struct nf_conn_stats {
	__u64 ts_first; /* bpf_ktime_get_ns() at creation */
	__u64 ts_last;  /* last send/recv/state change */
	__u64 bytes_sent;
	__u64 bytes_recv;
	__u8 laddr[16];
	__u32 pid;      /* tgid of the first process seen using the socket */
	__u32 retransmits;
	__u32 rtt_us;     /* tcp_sock.srtt_us >> 3 at the last event */
	__u32 rtt_var_us; /* tcp_sock.mdev_us >> 2 */
	__u16 lport;      /* host byte order */
	__u8 family;      /* 4 or 6 */
	__u8 proto;       /* 6 tcp, 17 udp */
	__u8 direction;   /* NF_DIR_* */
	__u8 flags;       /* NF_F_* */
	__u16 _pad;
	char comm[NF_COMM_LEN]; /* process (thread-group leader) name */
};

/* Closed-connection record on the `closed` ring buffer (final totals), and
 * the value of the `tcp_flows` map (live totals). */
struct nf_conn_event {
	struct nf_conn_key key;
	struct nf_conn_stats stats;
};

/* Key of the bound_ports map: local ports of listening TCP sockets (added
 * on listen, removed when the listener closes) and, for the collector's
 * first interval, of UDP servers found at start; a flow on such a port is
 * incoming. */
struct nf_port_key {
	__u16 port;
	__u8 proto;
	__u8 _pad;
};

#endif

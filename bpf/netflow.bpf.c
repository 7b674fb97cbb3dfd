// SPDX-License-Identifier: GPL-2.0
/* netflow: per-connection TCP and UDP statistics without kprobes.
 *
 * Hooks (all available where CONFIG_KPROBES is off):
 *   tp_btf/sock_send_length, tp_btf/sock_recv_length  bytes per socket call
 *       (net/socket.c fires them from sock_sendmsg_nosec/sock_recvmsg_nosec,
 *       which read, write, the send and recv calls, sendfile and splice to a socket pass)
 *   tp_btf/inet_sock_set_state   TCP handshake and listen
 *   tp_btf/tcp_destroy_sock      the end of a TCP socket
 *   tp_btf/tcp_retransmit_skb    retransmitted segments
 *   cgroup/sendmsg4/6, cgroup/recvmsg4/6 on the root cgroup v2   the peer
 *       of each datagram of an unconnected UDP socket, which the sock does
 *       not hold (attached as links: multi-attach, gone with the collector)
 *
 * No syscall tracepoint: one of those moves every syscall of every task to
 * the slow path (DESIGN.md, "What hooks cost"). The cgroup hooks run only
 * inside udp_sendmsg/udp_recvmsg for datagrams that carry an address.
 *
 * Cumulative stats live in the `conns` hash map, read by user space each
 * interval; a closed TCP connection is removed from the map and its final
 * totals go out on the `closed` ring buffer, so it is counted exactly once.
 */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "include/drops.bpf.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "include/netflow.h"
#include "include/ring_wake.bpf.h"


/* TCP states, include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10

char LICENSE[] SEC("license") = "GPL";

/* knobs, set by user space between open and load */
const volatile __u8 ipv6_disabled = 0;
const volatile __u32 self_tgid = 0; /* the collector's own traffic is skipped */

#include "include/sock_tuple.bpf.h" /* uses ipv6_disabled */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nf_conn_key);
	__type(value, struct nf_conn_stats);
} conns SEC(".maps");

#define CLOSED_RING_BYTES (1 << 22)
/* Wake the reader once this much waits, not per closed connection: it
 * merges closed records in steps of thousands (plugins/netflow.py), and a
 * wakeup per record would cost a loop pass per connection (20k/s and more
 * on a busy proxy). A sixteenth of the ring is ~2000 records. */
#define CLOSED_WAKE_BYTES (CLOSED_RING_BYTES / 16)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CLOSED_RING_BYTES);
} closed SEC(".maps");

/* per-CPU bytes written since the ring was last asked (include/ring_wake.bpf.h) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} closed_unqueried SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nf_port_key);
	__type(value, __u8);
} bound_ports SEC(".maps");

/* Sockets of the collector itself (its posts to DataKit, its debug server):
 * marked in process context when it connects or listens. Their handshake
 * and close run in softirq, where the current task tells nothing, so the
 * mark travels with the socket; BPF_F_CLONE copies a listener's mark to
 * the sockets it accepts (sk_clone_lock -> bpf_sk_storage_clone). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, __u8);
} own_socks SEC(".maps");

DROP_COUNTERS(drops, NF_DROP_MAX);

/* The peer of an unconnected UDP socket's datagram, handed from the cgroup
 * sock_addr hook to the sock_*_length tracepoint that follows it in the
 * same thread. The hooks run inside the protocol (udp_sendmsg before the
 * send; udp_recvmsg after the copy, when the caller asked for the source
 * address), the tracepoint when the protocol returns
 * (sock_sendmsg_nosec / sock_recvmsg_nosec), so the two meet in one
 * thread with nothing of that thread in between; sendmmsg and recvmmsg
 * pass the same way, one datagram at a time (tested), and so do io_uring's
 * socket calls, which reach the same protocol functions in the submitting
 * thread or an io-wq worker (not tested).
 *
 * Keyed by thread, not by socket: threads sharing one socket (a server's
 * worker pool) do not overwrite each other's peer. An LRU hash, not task
 * storage: only recent kernels let cgroup programs reach task storage (it
 * loads on 6.18, where bpf_base_func_proto offers it), and the LRU bounds
 * what threads that exit leave behind. An entry
 * is rewritten in place and emptied (sk = 0) when taken: no element
 * allocated or freed per datagram. */
struct udp_peer {
	__u64 sk;       /* the socket the hook ran for; 0 once taken */
	__u8 addr[16];  /* as sock_tuple.raddr */
	__u16 port;     /* host byte order */
	__u8 family;    /* 4 or 6 */
	__u8 _pad[5];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* bpf_get_current_pid_tgid() */
	__type(value, struct udp_peer);
} udp_peers SEC(".maps");

static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* The peer the cgroup hook left for this thread's datagram on sk, taken.
 * The peer's family decides the flow's: a dual-stack socket (AF_INET6 on
 * `::` without IPV6_V6ONLY) talks to IPv4 peers through v4-mapped
 * addresses, which the hook folded to IPv4. Its local address is then `::`,
 * all zeros, which already reads as 0.0.0.0; a socket bound to a specific
 * IPv6 address cannot reach IPv4 peers, and one bound to a v4-mapped
 * address is IPv4 already. No peer (the caller did not ask for the source
 * address, or the socket's cgroup is outside the hierarchy the hooks are
 * attached to): counted, the datagram is not. */
static __always_inline int take_peer(const struct sock *sk, struct sock_tuple *t)
{
	__u64 tid = bpf_get_current_pid_tgid();
	struct udp_peer *p = bpf_map_lookup_elem(&udp_peers, &tid);
	if (!p || p->sk != (__u64)sk) {
		count_drop(&drops, NF_DROP_UDP_PEER);
		return 0;
	}
	__builtin_memcpy(t->raddr, p->addr, 16);
	t->rport = p->port;
	t->family = p->family;
	p->sk = 0;
	return 1;
}

static __always_inline __u8 port_direction(__u16 lport, __u8 proto)
{
	struct nf_port_key pk = {.port = lport, .proto = proto};
	return bpf_map_lookup_elem(&bound_ports, &pk) ? NF_DIR_INCOMING : NF_DIR_OUTGOING;
}

/* Fill pid and process name from the current task: only called from process
 * context (syscalls, connect, close), never from softirq state changes where
 * the current task is whoever was interrupted. */
static __always_inline void set_owner(struct nf_conn_stats *s)
{
	if (s->pid)
		return; /* the common case, on every call: no helper call */
	__u32 tgid = current_tgid();
	if (!tgid)
		return;
	s->pid = tgid;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	BPF_CORE_READ_STR_INTO(&s->comm, task, group_leader, comm);
}

static __always_inline void read_rtt(const struct sock *sk, struct nf_conn_stats *s)
{
	const struct tcp_sock *tp = KERNEL_CAST(struct tcp_sock, sk);
	__u32 srtt = tp->srtt_us;
	if (srtt) {
		s->rtt_us = srtt >> 3;
		s->rtt_var_us = tp->mdev_us >> 2;
	}
}

static __always_inline void make_key(struct nf_conn_key *key, const struct sock *sk, const struct sock_tuple *t)
{
	__builtin_memset(key, 0, sizeof(*key));
	/* the socket's cookie, not its address: a UDP socket has no end we
	 * see, and the next socket allocated at the same address (a DNS
	 * client's next query) would add to its flow under its process */
	key->sk = bpf_get_socket_cookie((void *)sk);
	__builtin_memcpy(key->raddr, t->raddr, 16);
	key->rport = t->rport;
}

/* Find or create the entry of a flow. Returns NULL when the map is full. */
static __always_inline struct nf_conn_stats *
get_conn(const struct sock *sk, const struct sock_tuple *t, struct nf_conn_key *key, __u8 direction)
{
	make_key(key, sk, t);
	struct nf_conn_stats *s = bpf_map_lookup_elem(&conns, key);
	if (s) {
		/* connect() moves to SYN_SENT before it picks the local port */
		if (!s->lport && t->lport) {
			s->lport = t->lport;
			__builtin_memcpy(s->laddr, t->laddr, 16);
		}
		return s;
	}

	struct nf_conn_stats init = {};
	init.ts_first = init.ts_last = bpf_ktime_get_ns();
	__builtin_memcpy(init.laddr, t->laddr, 16);
	init.lport = t->lport;
	init.family = t->family;
	init.proto = t->proto;
	init.direction = direction ? direction : port_direction(t->lport, t->proto);
	if (bpf_map_update_elem(&conns, key, &init, BPF_NOEXIST) && bpf_map_lookup_elem(&conns, key) == 0) {
		count_drop(&drops, NF_DROP_CONNS);
		return 0;
	}
	return bpf_map_lookup_elem(&conns, key);
}

static __always_inline void account(const struct sock *sk, struct sock_tuple *t, __s64 sent, __s64 recv)
{
	struct nf_conn_key key;
	/* A UDP flow's first datagram tells who began it, whatever port the
	 * socket bound: DNS forwarders and resolvers (dnsmasq, unbound) bind
	 * random source ports for their upstream queries. bound_ports only
	 * holds UDP servers' ports from before the collector started (user
	 * space seeds them for its first interval), whose first datagrams it
	 * missed. */
	__u8 dir = (t->proto == IPPROTO_UDP && recv > 0) ? NF_DIR_INCOMING : 0;
	struct nf_conn_stats *s = get_conn(sk, t, &key, dir);
	if (!s)
		return;
	set_owner(s);
	/* ts_last tells idle flows, which leave the map: UDP ones. A TCP flow
	 * stays until tcp_destroy_sock (ext/conntable.pyx, _tcp_flow), so its
	 * calls skip the clock read (the state changes still stamp it). */
	if (t->proto != IPPROTO_TCP)
		s->ts_last = bpf_ktime_get_ns();
	if (sent > 0)
		__sync_fetch_and_add(&s->bytes_sent, sent);
	if (recv > 0)
		__sync_fetch_and_add(&s->bytes_recv, recv);
	if (t->proto == IPPROTO_TCP)
		read_rtt(sk, s);
}

static __always_inline int unconnected_udp(const struct sock_tuple *t)
{
	const __u32 *w = (const __u32 *)t->raddr;
	return t->proto == IPPROTO_UDP && t->rport == 0 && (w[0] | w[1] | w[2] | w[3]) == 0;
}

static __always_inline int skip_self(void)
{
	return self_tgid && current_tgid() == self_tgid;
}

/* Mark a socket the collector connects or listens with (process context). */
static __always_inline void mark_own(const struct sock *sk)
{
	__u8 *v = bpf_sk_storage_get(&own_socks, (struct sock *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (v)
		*v = 1;
}

static __always_inline int own_socket(const struct sock *sk)
{
	return self_tgid && bpf_sk_storage_get(&own_socks, (struct sock *)sk, 0, 0) != 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_send, struct sock *sk, int ret, int flags)
{
	struct sock_tuple t = {};
	if (ret <= 0 || skip_self() || !read_tuple(sk, &t))
		return 0;
	if (unconnected_udp(&t) && !take_peer(sk, &t))
		return 0;
	account(sk, &t, ret, 0);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv, struct sock *sk, int ret, int flags)
{
	struct sock_tuple t = {};
	/* a peek is read again; the error queue holds no peer's bytes */
	if (ret <= 0 || (flags & (MSG_PEEK | MSG_ERRQUEUE)) || skip_self() || !read_tuple(sk, &t))
		return 0;
	if (unconnected_udp(&t) && !take_peer(sk, &t))
		return 0;
	account(sk, &t, 0, ret);
	return 0;
}

/* The cgroup hooks: the peer of the datagram under way, for the tracepoint
 * that follows. They never change the address and always allow (return
 * 1): other programs on the hierarchy (a service mesh's socket load
 * balancer) run as before. ctx->user_port is in network byte order. */
static __always_inline void stash_peer(struct bpf_sock_addr *ctx, const __u8 *v6, __u32 v4, int is_v6)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || skip_self())
		return;
	__u64 tid = bpf_get_current_pid_tgid();
	struct udp_peer *p = bpf_map_lookup_elem(&udp_peers, &tid);
	if (p) {
		p->family = put_addr(p->addr, v6, v4, is_v6);
		if (p->family == 6 && ipv6_disabled) {
			p->sk = 0;
			return;
		}
		p->port = bpf_ntohs((__u16)ctx->user_port);
		p->sk = (__u64)sk;
		return;
	}
	struct udp_peer init = {};
	init.family = put_addr(init.addr, v6, v4, is_v6);
	if (init.family == 6 && ipv6_disabled)
		return;
	init.port = bpf_ntohs((__u16)ctx->user_port);
	init.sk = (__u64)sk;
	if (bpf_map_update_elem(&udp_peers, &tid, &init, BPF_ANY))
		count_drop(&drops, NF_DROP_PEERS_MAP);
}

static __always_inline int peer4(struct bpf_sock_addr *ctx)
{
	stash_peer(ctx, 0, ctx->user_ip4, 0);
	return 1;
}

static __always_inline int peer6(struct bpf_sock_addr *ctx)
{
	/* the context allows 4-byte loads of user_ip6 */
	__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	stash_peer(ctx, (const __u8 *)a, 0, 1);
	return 1;
}

SEC("cgroup/sendmsg4")
int peer_sendmsg4(struct bpf_sock_addr *ctx) { return peer4(ctx); }
SEC("cgroup/sendmsg6")
int peer_sendmsg6(struct bpf_sock_addr *ctx) { return peer6(ctx); }
SEC("cgroup/recvmsg4")
int peer_recvmsg4(struct bpf_sock_addr *ctx) { return peer4(ctx); }
SEC("cgroup/recvmsg6")
int peer_recvmsg6(struct bpf_sock_addr *ctx) { return peer6(ctx); }

static __always_inline void emit_closed(const struct nf_conn_key *key, struct nf_conn_stats *s)
{
	__u32 zero = 0;
	__u32 *unqueried = bpf_map_lookup_elem(&closed_unqueried, &zero);
	if (!unqueried)
		return;
	struct nf_conn_event *ev = bpf_ringbuf_reserve(&closed, sizeof(*ev), 0);
	if (!ev) {
		count_drop(&drops, NF_DROP_RING);
		return;
	}
	ev->key = *key;
	ev->stats = *s;
	ev->stats.flags |= NF_F_CLOSED;
	bpf_ringbuf_submit(ev, ring_wake_flag(&closed, unqueried, sizeof(*ev), CLOSED_WAKE_BYTES));
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, int oldstate, int newstate)
{
	struct sock_tuple t = {};
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP || !read_tuple(sk, &t))
		return 0;
	if ((newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) && skip_self()) {
		mark_own(sk);
		return 0;
	}
	if (own_socket(sk))
		return 0;

	if (newstate == TCP_LISTEN || oldstate == TCP_LISTEN) {
		struct nf_port_key pk = {.port = t.lport, .proto = IPPROTO_TCP};
		__u8 one = 1;
		if (newstate == TCP_LISTEN) {
			if (bpf_map_update_elem(&bound_ports, &pk, &one, BPF_ANY))
				count_drop(&drops, NF_DROP_BOUND);
		} else if (newstate == TCP_CLOSE) {
			bpf_map_delete_elem(&bound_ports, &pk);
		}
		return 0;
	}

	struct nf_conn_key key;
	struct nf_conn_stats *s;
	if (newstate == TCP_SYN_SENT) {
		/* connect() runs in the caller's context: the owner is known */
		s = get_conn(sk, &t, &key, NF_DIR_OUTGOING);
		if (s)
			set_owner(s);
		return 0;
	}
	if (newstate == TCP_ESTABLISHED) {
		/* runs in softirq: the current task is not the owner */
		s = get_conn(sk, &t, &key, oldstate == TCP_SYN_RECV ? NF_DIR_INCOMING : NF_DIR_OUTGOING);
		if (s) {
			s->flags |= NF_F_ESTABLISHED;
			s->ts_last = bpf_ktime_get_ns();
			read_rtt(sk, s);
		}
		return 0;
	}

	if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK) {
		/* close() by the owner, in process context */
		make_key(&key, sk, &t);
		s = bpf_map_lookup_elem(&conns, &key);
		if (s)
			set_owner(s);
	}
	return 0;
}

/* The end of a TCP socket. Not TCP_CLOSE: a socket reaches CLOSE (e.g. via
 * TIME_WAIT when the peer's FIN arrives) while its owner may still be
 * reading queued data; tcp_destroy_sock fires once, after the last read. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy, struct sock *sk)
{
	struct sock_tuple t = {};
	if (!read_tuple(sk, &t))
		return 0;
	struct nf_conn_key key;
	make_key(&key, sk, &t);
	struct nf_conn_stats *s = bpf_map_lookup_elem(&conns, &key);
	if (!s)
		return 0;
	read_rtt(sk, s);
	s->ts_last = bpf_ktime_get_ns();
	/* a connect() that never completed and moved no data is not a flow */
	if ((s->flags & NF_F_ESTABLISHED) || s->bytes_sent || s->bytes_recv)
		emit_closed(&key, s);
	bpf_map_delete_elem(&conns, &key);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit, const struct sock *sk)
{
	struct sock_tuple t = {};
	struct nf_conn_key key;
	if (own_socket(sk) || !read_tuple(sk, &t))
		return 0;
	struct nf_conn_stats *s = get_conn(sk, &t, &key, 0);
	if (s)
		__sync_fetch_and_add(&s->retransmits, 1);
	return 0;
}

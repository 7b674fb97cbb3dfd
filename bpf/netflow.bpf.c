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
 * Cumulative stats live in two hash maps read by user space each interval:
 * `tcp_flows`, keyed by the TCP socket's cookie alone (the peer is in the
 * value, written once when the flow is first seen), and `conns`, UDP flows
 * keyed by cookie and peer (one unconnected socket talks to many peers).
 * A socket call on a known TCP flow so costs one hash lookup on the
 * cookie: no address tuple read, no clock read. A closed TCP connection is
 * removed from its map and its final totals go out on the `closed` ring
 * buffer, so it is counted exactly once.
 *
 * Why a cookie-keyed hash and not BPF socket storage (which would need no
 * lookup at all): user space must enumerate the flows each interval, and
 * this kernel refuses the map iterators that could walk socket storage
 * (iter/bpf_sk_storage_map, iter/bpf_map_elem: EPERM).
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

/* Ablation, for perf/bench_httpflow_e2e.py only (BENCH_NETFLOW_ABLATE
 * builds variants of this file with -DNETFLOW_ABLATE=<n>, each stopping
 * the socket-call programs (on_send, on_recv) after one stage, to measure
 * in one run what each stage costs); 0, the default, is the product and
 * compiles none of it:
 *   1 return at once (hooks and collector, no BPF work)
 *   2 the flow lookup only (the TCP flows still start at the handshake)
 *   3 lookup and byte counters, no owner check and no RTT read */
#ifndef NETFLOW_ABLATE
#define NETFLOW_ABLATE 0
#endif

/* knobs, set by user space between open and load */
const volatile __u8 ipv6_disabled = 0;
const volatile __u32 self_tgid = 0; /* the collector's own traffic is skipped */

#include "include/sock_tuple.bpf.h" /* uses ipv6_disabled */

/* UDP flows: a socket and one peer */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nf_conn_key);
	__type(value, struct nf_conn_stats);
} conns SEC(".maps");

/* TCP flows: the socket cookie -> the flow's key (its peer) and stats, the
 * layout of a closed record, so closing one copies the value out as is.
 * Not preallocated: the memory follows the connections there are. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct nf_conn_event);
} tcp_flows SEC(".maps");

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

/* A new flow's stats: local end, family and protocol from the socket, the
 * clock read once (ts_first tells instances of one key apart). */
static __always_inline void init_stats(struct nf_conn_stats *s, const struct sock_tuple *t, __u8 direction)
{
	s->ts_first = s->ts_last = bpf_ktime_get_ns();
	__builtin_memcpy(s->laddr, t->laddr, 16);
	s->lport = t->lport;
	s->family = t->family;
	s->proto = t->proto;
	s->direction = direction ? direction : port_direction(t->lport, t->proto);
}

/* connect() moves to SYN_SENT before it picks the local port */
static __always_inline void fix_local_end(struct nf_conn_stats *s, const struct sock_tuple *t)
{
	if (!s->lport && t->lport) {
		s->lport = t->lport;
		__builtin_memcpy(s->laddr, t->laddr, 16);
	}
}

static __always_inline void add_bytes(struct nf_conn_stats *s, __s64 sent, __s64 recv)
{
	if (sent > 0)
		__sync_fetch_and_add(&s->bytes_sent, sent);
	if (recv > 0)
		__sync_fetch_and_add(&s->bytes_recv, recv);
}

/* ---- TCP flows: tcp_flows, keyed by the socket cookie */

/* The socket's cookie as it stands, read without the helper: 0 while
 * nothing asked for one, and then the socket has no entry (every entry is
 * made under bpf_get_socket_cookie, which sets it). */
static __always_inline __u64 cookie_of(const struct sock *sk)
{
	return KERNEL_CAST(struct sock, sk)->__sk_common.skc_cookie.counter;
}

static __always_inline struct nf_conn_event *tcp_flow_of(const struct sock *sk)
{
	__u64 cookie = cookie_of(sk);
	return cookie ? bpf_map_lookup_elem(&tcp_flows, &cookie) : 0;
}

/* Start the TCP flow of sk: its peer, written here once, and local end
 * from the socket now. update_flags: BPF_NOEXIST at first sight, BPF_ANY
 * for the next connection of a socket that had one (on_state). Returns
 * NULL when the map is full. */
static __always_inline struct nf_conn_event *
new_tcp_flow(const struct sock *sk, const struct sock_tuple *t, __u8 direction, __u64 update_flags)
{
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	struct nf_conn_event init = {};
	init.key.sk = cookie;
	__builtin_memcpy(init.key.raddr, t->raddr, 16);
	init.key.rport = t->rport;
	init_stats(&init.stats, t, direction);
	if (bpf_map_update_elem(&tcp_flows, &cookie, &init, update_flags) &&
	    bpf_map_lookup_elem(&tcp_flows, &cookie) == 0) {
		count_drop(&drops, NF_DROP_CONNS);
		return 0;
	}
	return bpf_map_lookup_elem(&tcp_flows, &cookie);
}

/* The TCP flow of sk, started if new to us (a connection open before the
 * collector, or whose connect we did not see). */
static __always_inline struct nf_conn_event *
get_tcp_flow(const struct sock *sk, const struct sock_tuple *t, __u8 direction)
{
	struct nf_conn_event *f = tcp_flow_of(sk);
	if (f) {
		fix_local_end(&f->stats, t);
		return f;
	}
	return new_tcp_flow(sk, t, direction, BPF_NOEXIST);
}

/* A socket call on a TCP flow: no clock read (a TCP flow leaves the map
 * at tcp_destroy_sock, never idle: ext/conntable.pyx, _tcp_flow; the state
 * changes stamp ts_last). */
static __always_inline void count_tcp(const struct sock *sk, struct nf_conn_stats *s, __s64 sent, __s64 recv)
{
	if (NETFLOW_ABLATE == 3) {
		add_bytes(s, sent, recv);
		return;
	}
	set_owner(s);
	add_bytes(s, sent, recv);
	read_rtt(sk, s);
}

/* ---- UDP flows: conns, keyed by socket cookie and peer */

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

/* Find or create the entry of a UDP flow. Returns NULL when the map is full. */
static __always_inline struct nf_conn_stats *
get_udp_flow(const struct sock *sk, const struct sock_tuple *t, __u8 direction)
{
	struct nf_conn_key key;
	make_key(&key, sk, t);
	struct nf_conn_stats *s = bpf_map_lookup_elem(&conns, &key);
	if (s) {
		fix_local_end(s, t);
		return s;
	}
	struct nf_conn_stats init = {};
	init_stats(&init, t, direction);
	if (bpf_map_update_elem(&conns, &key, &init, BPF_NOEXIST) && bpf_map_lookup_elem(&conns, &key) == 0) {
		count_drop(&drops, NF_DROP_CONNS);
		return 0;
	}
	return bpf_map_lookup_elem(&conns, &key);
}

static __always_inline void count_udp(const struct sock *sk, struct sock_tuple *t, __s64 sent, __s64 recv)
{
	/* A UDP flow's first datagram tells who began it, whatever port the
	 * socket bound: DNS forwarders and resolvers (dnsmasq, unbound) bind
	 * random source ports for their upstream queries. bound_ports only
	 * holds UDP servers' ports from before the collector started (user
	 * space seeds them for its first interval), whose first datagrams it
	 * missed. */
	struct nf_conn_stats *s = get_udp_flow(sk, t, recv > 0 ? NF_DIR_INCOMING : 0);
	if (!s)
		return;
	set_owner(s);
	/* ts_last tells idle flows, which leave the map */
	s->ts_last = bpf_ktime_get_ns();
	add_bytes(s, sent, recv);
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

/* One socket call that moved bytes. */
static __always_inline void on_call(struct sock *sk, __s64 sent, __s64 recv)
{
	/* the common case first: a TCP flow we know, found by the cookie
	 * alone (the collector's own sockets never get one) */
	if (NETFLOW_ABLATE == 1)
		return;
	if (KERNEL_CAST(struct sock, sk)->sk_protocol == IPPROTO_TCP) {
		struct nf_conn_event *f = tcp_flow_of(sk);
		if (NETFLOW_ABLATE == 2)
			return;
		if (f) {
			count_tcp(sk, &f->stats, sent, recv);
			return;
		}
	}
	struct sock_tuple t = {};
	if (skip_self() || !read_tuple(sk, &t))
		return;
	if (t.proto == IPPROTO_TCP) {
		struct nf_conn_event *f = new_tcp_flow(sk, &t, 0, BPF_NOEXIST);
		if (f)
			count_tcp(sk, &f->stats, sent, recv);
		return;
	}
	if (unconnected_udp(&t) && !take_peer(sk, &t))
		return;
	count_udp(sk, &t, sent, recv);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_send, struct sock *sk, int ret, int flags)
{
	if (ret > 0)
		on_call(sk, ret, 0);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv, struct sock *sk, int ret, int flags)
{
	/* a peek is read again; the error queue holds no peer's bytes */
	if (ret > 0 && !(flags & (MSG_PEEK | MSG_ERRQUEUE)))
		on_call(sk, 0, ret);
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

/* The end of a TCP flow: its final totals on the ring, when it is a flow
 * (a connect() that never completed and moved no data is not). The
 * caller then deletes or replaces the entry. */
static __always_inline void end_tcp_flow(const struct nf_conn_event *f)
{
	const struct nf_conn_stats *s = &f->stats;
	if (!(s->flags & NF_F_ESTABLISHED) && !s->bytes_sent && !s->bytes_recv)
		return;
	__u32 zero = 0;
	__u32 *unqueried = bpf_map_lookup_elem(&closed_unqueried, &zero);
	if (!unqueried)
		return;
	struct nf_conn_event *ev = bpf_ringbuf_reserve(&closed, sizeof(*ev), 0);
	if (!ev) {
		count_drop(&drops, NF_DROP_RING);
		return;
	}
	*ev = *f;
	ev->stats.flags |= NF_F_CLOSED;
	bpf_ringbuf_submit(ev, ring_wake_flag(&closed, unqueried, sizeof(*ev), CLOSED_WAKE_BYTES));
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, int oldstate, int newstate)
{
	if (KERNEL_CAST(struct sock, sk)->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK) {
		/* close() by the owner, in process context */
		struct nf_conn_event *f = tcp_flow_of(sk);
		if (f)
			set_owner(&f->stats);
		return 0;
	}
	if (newstate != TCP_SYN_SENT && newstate != TCP_ESTABLISHED && newstate != TCP_LISTEN &&
	    oldstate != TCP_LISTEN)
		return 0;

	struct sock_tuple t = {};
	if (!read_tuple(sk, &t))
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

	struct nf_conn_event *f;
	if (newstate == TCP_SYN_SENT) {
		/* A socket that connects again (after connect(AF_UNSPEC) or a
		 * failed attempt) begins a new connection, to this peer or
		 * another: its previous flow ends here, as at a close, and the
		 * new one gets its own entry (a fresh ts_first: a new instance
		 * for user space). connect() runs in the caller's context: the
		 * owner is known. */
		f = tcp_flow_of(sk);
		if (f)
			end_tcp_flow(f);
		f = new_tcp_flow(sk, &t, NF_DIR_OUTGOING, BPF_ANY);
		if (f)
			set_owner(&f->stats);
		return 0;
	}
	/* ESTABLISHED: runs in softirq, the current task is not the owner */
	f = get_tcp_flow(sk, &t, oldstate == TCP_SYN_RECV ? NF_DIR_INCOMING : NF_DIR_OUTGOING);
	if (f) {
		f->stats.flags |= NF_F_ESTABLISHED;
		f->stats.ts_last = bpf_ktime_get_ns();
		read_rtt(sk, &f->stats);
	}
	return 0;
}

/* The end of a TCP socket. Not TCP_CLOSE: a socket reaches CLOSE (e.g. via
 * TIME_WAIT when the peer's FIN arrives) while its owner may still be
 * reading queued data; tcp_destroy_sock fires once, after the last read. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy, struct sock *sk)
{
	__u64 cookie = cookie_of(sk);
	struct nf_conn_event *f = cookie ? bpf_map_lookup_elem(&tcp_flows, &cookie) : 0;
	if (!f)
		return 0;
	read_rtt(sk, &f->stats);
	f->stats.ts_last = bpf_ktime_get_ns();
	end_tcp_flow(f);
	bpf_map_delete_elem(&tcp_flows, &cookie);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit, const struct sock *sk)
{
	struct nf_conn_event *f = tcp_flow_of(sk);
	if (!f) {
		struct sock_tuple t = {};
		if (own_socket(sk) || !read_tuple(sk, &t))
			return 0;
		f = new_tcp_flow(sk, &t, 0, BPF_NOEXIST);
		if (!f)
			return 0;
	}
	__sync_fetch_and_add(&f->stats.retransmits, 1);
	return 0;
}

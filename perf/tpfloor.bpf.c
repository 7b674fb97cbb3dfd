// SPDX-License-Identifier: GPL-2.0
/* Empty programs for perf/bench_tracepoint_floor.py: the fixed cost of the
 * attach points httpflow used (syscall tracepoints, one per call and
 * direction), one raw syscall tracepoint pair (tp_btf/sys_enter, sys_exit)
 * that filters the syscall number itself, and the hooks httpflow uses now
 * (tp_btf sock_send_length, sock_recv_length, tcp_destroy_sock: the floor
 * of perf/bench_httpflow_e2e.py), and on those hooks the price of the
 * ring write alone: sock_send_length writing one record of the size of a
 * typical httpflow exchange per call (2 per HTTP request on loopback: the
 * request's and the response's send, as httpflow writes one per end),
 * to one shared ring or to a ring per CPU (perf/bench_httpflow_e2e.py
 * modes floor_record_shared, floor_record_percpu; the bench drains them). */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "include/netflow.h"
#include "include/http.h"
#include "include/ring_wake.bpf.h"

char LICENSE[] SEC("license") = "GPL";

__u64 hits = 0;

#define EMPTY_PAIR(call)								\
	SEC("tracepoint/syscalls/sys_enter_" #call)					\
	int tp_enter_##call(void *ctx) { return 0; }					\
	SEC("tracepoint/syscalls/sys_exit_" #call)					\
	int tp_exit_##call(void *ctx) { return 0; }

EMPTY_PAIR(read)
EMPTY_PAIR(write)
EMPTY_PAIR(readv)
EMPTY_PAIR(writev)
EMPTY_PAIR(sendto)
EMPTY_PAIR(recvfrom)
EMPTY_PAIR(sendmsg)
EMPTY_PAIR(recvmsg)

/* x86_64 numbers of the same calls */
static __always_inline int wanted(long id)
{
	return id == 0 || id == 1 || id == 19 || id == 20 || id == 44 || id == 45 || id == 46 || id == 47;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(raw_enter, struct pt_regs *regs, long id)
{
	if (wanted(id))
		__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(raw_exit, struct pt_regs *regs, long ret)
{
	long id = regs->orig_ax;
	if (wanted(id))
		__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send, struct sock *sk, int ret, int flags) { return 0; }

SEC("tp_btf/sock_recv_length")
int BPF_PROG(sock_recv, struct sock *sk, int ret, int flags) { return 0; }

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(sock_destroy, struct sock *sk) { return 0; }

/* The ring write priced: like httpflow's (include/http_msg.bpf.h
 * http_finish: bpf_ringbuf_output of a record that ends after its head,
 * woken by ring_wake_flag), from a per-CPU scratch record. */
#define FLOOR_RING_BYTES (1 << 24)
#define FLOOR_WAKE_BYTES (FLOOR_RING_BYTES / 16)
#define FLOOR_HEAD_LEN 64 /* wrk's request: "GET /ok HTTP/1.1" and a Host header */
#define FLOOR_CPUS 4      /* rings of floor_record_percpu; CPU n writes to n % FLOOR_CPUS */

struct floor_scratch {
	struct http_exchange x;
	__u32 unqueried[FLOOR_CPUS]; /* per ring: ring_wake_flag's count */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct floor_scratch);
} floor_scratch SEC(".maps");

struct floor_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FLOOR_RING_BYTES);
};

struct floor_ring ring_shared SEC(".maps");
struct floor_ring ring_cpu0 SEC(".maps");
struct floor_ring ring_cpu1 SEC(".maps");
struct floor_ring ring_cpu2 SEC(".maps");
struct floor_ring ring_cpu3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, FLOOR_CPUS);
	__type(key, __u32);
	__array(values, struct floor_ring);
} rings_percpu SEC(".maps") = {
	.values = {&ring_cpu0, &ring_cpu1, &ring_cpu2, &ring_cpu3},
};

static __always_inline int floor_record(void *ring, __u32 slot)
{
	__u32 zero = 0;
	struct floor_scratch *s = bpf_map_lookup_elem(&floor_scratch, &zero);
	if (!s || !ring)
		return 0;
	__u32 size = HTTP_EXCHANGE_MIN_SIZE + FLOOR_HEAD_LEN;
	s->x.head_len = FLOOR_HEAD_LEN;
	s->x.ts_req = bpf_ktime_get_ns();
	/* a full ring shows as fewer records drained than 2 per request */
	bpf_ringbuf_output(ring, &s->x, size, ring_wake_flag(ring, &s->unqueried[slot % FLOOR_CPUS], size, FLOOR_WAKE_BYTES));
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send_rec_shared, struct sock *sk, int ret, int flags)
{
	return floor_record(&ring_shared, 0);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send_rec_percpu, struct sock *sk, int ret, int flags)
{
	__u32 cpu = bpf_get_smp_processor_id() % FLOOR_CPUS;
	return floor_record(bpf_map_lookup_elem(&rings_percpu, &cpu), cpu);
}

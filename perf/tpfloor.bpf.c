// SPDX-License-Identifier: GPL-2.0
/* Empty programs for perf/bench_tracepoint_floor.py: the fixed cost of the
 * attach points httpflow used (syscall tracepoints, one per call and
 * direction), one raw syscall tracepoint pair (tp_btf/sys_enter, sys_exit)
 * that filters the syscall number itself, and the hooks httpflow uses now
 * (tp_btf sock_send_length, sock_recv_length, tcp_destroy_sock: the floor
 * of perf/bench_httpflow_e2e.py). */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

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

// SPDX-License-Identifier: GPL-2.0
/* Producer for perf/bench_ring.py: each getppid() call by the benchmark's
 * process puts `per_call` closed-connection records on the ring, so the
 * ring can be filled fast and the consumer measured alone. */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "include/netflow.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;
const volatile __u32 per_call = 64;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 26);
} ring SEC(".maps");

__u64 produced = 0;
__u64 failed = 0;

static long emit(__u32 i, void *ctx)
{
	struct nf_conn_event *ev = bpf_ringbuf_reserve(&ring, sizeof(*ev), 0);
	if (!ev) {
		__sync_fetch_and_add(&failed, 1);
		return 1;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->key.sk = i;
	ev->stats.bytes_sent = i * 3;
	ev->stats.pid = target_tgid;
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	__sync_fetch_and_add(&produced, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int produce(void *ctx)
{
	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	bpf_loop(per_call, emit, 0, 0);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/* Producer for tests/kernel/test_ring_reader.py: each getppid() of the test's
 * process puts `per_call` records of 100 bytes on a small ring. 100 bytes
 * plus the 8-byte header take 112-byte slots, which do not divide the
 * ring's size: records keep wrapping around its end. Each record's bytes
 * follow from its sequence number, so the reader's copy can be checked. */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define PAD 92

struct wrap_rec {
	__u64 seq;
	__u8 pad[PAD]; /* pad[j] = (seq + j) & 0xff */
};

const volatile __u32 target_tgid = 0;
const volatile __u32 per_call = 32;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 14);
} ring SEC(".maps");

__u64 seq = 0;
__u64 failed = 0;

static long emit(__u32 i, void *ctx)
{
	struct wrap_rec *r = bpf_ringbuf_reserve(&ring, sizeof(*r), 0);
	__u64 s;
	if (!r) {
		__sync_fetch_and_add(&failed, 1);
		return 1;
	}
	s = __sync_fetch_and_add(&seq, 1);
	r->seq = s;
#pragma unroll
	for (int j = 0; j < PAD; j++)
		r->pad[j] = (s + j) & 0xff;
	bpf_ringbuf_submit(r, 0);
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

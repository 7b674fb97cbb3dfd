// SPDX-License-Identifier: GPL-2.0
/* The kernel build of include/h2frame.h for tests/kernel/test_h2frame_rule.py:
 * each BPF_PROG_TEST_RUN hands one case in as the context and gets
 * h2_frames_exact's verdict back as the return value. The payload is first
 * copied into a buffer with slack behind it, as span_h2_mark's payload sits
 * in span_scratch (the masked header reads then verify the same way). */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "include/h2frame.h"

char LICENSE[] SEC("license") = "GPL";

struct h2_case {
	__u8 payload[TRACE_PAYLOAD_MAX];
	__u32 n; /* the call's length (bytes == cap_len), at most TRACE_PAYLOAD_MAX */
};

__u8 buf[2 * TRACE_PAYLOAD_MAX];

SEC("syscall")
int h2_rule(struct h2_case *c)
{
	__u32 n = c->n;
	if (bpf_probe_read_kernel(buf, TRACE_PAYLOAD_MAX, c))
		return -1;
	return h2_frames_exact(buf, n);
}

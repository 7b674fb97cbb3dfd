/* When a BPF program should wake a ring buffer's reader (BPF side only).
 *
 * The readers take records once per interval, so a record does not wake
 * them (BPF_RB_NO_WAKEUP) until `wake_bytes` wait in the ring. Asking the
 * ring how much waits (bpf_ringbuf_query(BPF_RB_AVAIL_DATA)) reads the
 * consumer position, a cache line the reader keeps writing: ~350 ns per
 * record on a 2-CPU KVM guest (perf/bench_bpf_cost.py, httpflow exit_write
 * 742 -> 426 ns without it). So each CPU asks only once per wake_bytes / 16
 * it wrote, counted in `*unqueried` (per-CPU scratch memory); the reader is
 * woken at most ncpus * wake_bytes / 16 later than exactly at wake_bytes. */
#ifndef DKEBPF_RING_WAKE_H
#define DKEBPF_RING_WAKE_H

static __always_inline __u64 ring_wake_flag(void *ring, __u32 *unqueried, __u32 size, __u64 wake_bytes)
{
	*unqueried += size;
	if (*unqueried < wake_bytes / 16)
		return BPF_RB_NO_WAKEUP;
	*unqueried = 0;
	return bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= wake_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

#endif

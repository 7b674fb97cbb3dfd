/* Drop counters of a BPF program (BPF side only): one per-CPU array map of
 * __u64 indexed by the program's *_DROP_* constants, which live in its
 * shared header (include/<name>.h) because user space names them
 * (ext/records.pyx *_DROP_NAMES) and sums the CPUs. Whatever the program
 * fails to record or to create (ring full, map full, task storage not
 * created) is counted here, never lost silently. */
#ifndef DKEBPF_DROPS_BPF_H
#define DKEBPF_DROPS_BPF_H

#define DROP_COUNTERS(name, n)                                                                     \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                           \
		__uint(max_entries, n);                                                            \
		__type(key, __u32);                                                                \
		__type(value, __u64);                                                              \
	} name SEC(".maps")

static __always_inline void count_drop(void *counters, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(counters, &idx);
	if (v)
		*v += 1;
}

#endif

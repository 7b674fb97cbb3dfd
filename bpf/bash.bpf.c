// SPDX-License-Identifier: GPL-2.0
/* bash: every line an interactive bash reads, from a uretprobe on bash's
 * readline().
 *
 * readline() (GNU readline, linked into Debian's bash and exported in its
 * .dynsym) returns a malloc'd, NUL-terminated copy of the line the user
 * entered, or NULL at end of input. User space attaches this program to
 * each distinct bash binary (inode) it finds; the uretprobe fires in every
 * process running that binary, in any mount namespace.
 *
 * One fixed-size record per non-empty line goes out on the `lines` ring
 * buffer; lines that cannot be recorded are counted in `drops`.
 */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "include/drops.bpf.h"
#include "include/bash.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* 2048 records: minutes of the fastest typing */
} lines SEC(".maps");

DROP_COUNTERS(drops, BASH_DROP_MAX);

/* where the rest of a long line is read to measure its length */
struct scratch {
	char buf[BASH_LEN_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* Length of the part of the line past line[]: read on until the NUL, at
 * most BASH_LEN_CHUNKS pieces. Sets *at_least when it stopped early. */
static __always_inline __u32 measure_rest(const char *rest, int *at_least)
{
	__u32 zero = 0, len = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	*at_least = 1;
	if (!s)
		return 0;
	for (int i = 0; i < BASH_LEN_CHUNKS; i++) {
		long m = bpf_probe_read_user_str(s->buf, sizeof(s->buf), rest + len);
		if (m <= 0)
			return len; /* unreadable: report what was measured */
		len += m - 1;
		/* fewer than the piece's capacity: the NUL was found. A piece that
		 * ends exactly at the NUL also returns the full size; the next
		 * read then returns 1 and ends the loop without adding. */
		if (m < (long)sizeof(s->buf)) {
			*at_least = 0;
			return len;
		}
	}
	return len;
}

SEC("uretprobe")
int BPF_KRETPROBE(bash_readline, const char *ret)
{
	struct bash_line *rec;
	long n;
	int at_least = 0;

	if (!ret) /* end of input (Ctrl-D, closed terminal) */
		return 0;
	rec = bpf_ringbuf_reserve(&lines, sizeof(*rec), 0);
	if (!rec) {
		count_drop(&drops, BASH_DROP_RING);
		return 0;
	}
	/* copies up to BASH_LINE_MAX bytes and a NUL; returns bytes incl. the NUL */
	n = bpf_probe_read_user_str(rec->line, sizeof(rec->line), ret);
	if (n <= 0) {
		count_drop(&drops, BASH_DROP_READ);
		bpf_ringbuf_discard(rec, 0);
		return 0;
	}
	if (n == 1) { /* an empty line executes nothing */
		bpf_ringbuf_discard(rec, 0);
		return 0;
	}
	rec->captured = n - 1;
	rec->line_len = n - 1;
	rec->flags = 0;
	if (n == sizeof(rec->line)) /* line[] is full: the line may go on */
		rec->line_len += measure_rest(ret + BASH_LINE_MAX, &at_least);
	if (rec->line_len > rec->captured)
		rec->flags |= BASH_F_TRUNCATED;
	if (at_least)
		rec->flags |= BASH_F_LEN_AT_LEAST;
	rec->ts = bpf_ktime_get_ns();
	rec->pid = bpf_get_current_pid_tgid() >> 32;
	/* low half: the real uid of the task's cred (kernel/bpf/helpers.c) */
	rec->uid = (__u32)bpf_get_current_uid_gid();
	rec->_pad = 0;
	bpf_ringbuf_submit(rec, 0);
	return 0;
}

/* Record shared by bpf/bash.bpf.c and ext/ (Cython): one line bash read
 * with readline(), as it was when readline() returned.
 *
 * The numpy dtype of this struct is derived from sizeof/offsetof in
 * ext/records.pyx, so both sides agree on the layout by construction.
 */
#ifndef DKEBPF_BASH_H
#define DKEBPF_BASH_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Bytes of a line kept in a record. Longer lines are cut here (user space
 * then backs up to a UTF-8 character boundary) and flagged truncated.
 * line[] has one more byte for the NUL bpf_probe_read_user_str() always
 * writes; a record is then 512 bytes (24 + 481, aligned to 8). */
#define BASH_LINE_MAX 480

/* How far the BPF program measures a long line's true length: past
 * line[] it reads on in pieces of up to BASH_LEN_CHUNK - 1 bytes (the
 * helper's NUL takes the last byte), at most BASH_LEN_CHUNKS of them.
 * A longer line reports what was measured and BASH_F_LEN_AT_LEAST. */
#define BASH_LEN_CHUNK 4096
#define BASH_LEN_CHUNKS 16

/* bash_line.flags */
#define BASH_F_TRUNCATED 1    /* line_len > captured: only a prefix is in line[] */
#define BASH_F_LEN_AT_LEAST 2 /* the line is longer still than line_len */

/* index into the per-CPU `drops` array map */
#define BASH_DROP_RING 0 /* ring buffer full: a line went unrecorded */
#define BASH_DROP_READ 1 /* the line could not be read from bash's memory */
#define BASH_DROP_MAX 2

struct bash_line {
	__u64 ts;       /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when readline() returned */
	__u32 pid;      /* tgid of the bash process */
	__u32 uid;      /* real uid of the task (cred->uid) */
	__u32 line_len; /* strlen of the line (see BASH_F_LEN_AT_LEAST) */
	__u16 captured; /* bytes of the line in line[] (<= BASH_LINE_MAX) */
	__u8 flags;     /* BASH_F_* */
	__u8 _pad;
	char line[BASH_LINE_MAX + 1]; /* captured bytes, then a NUL; the rest is undefined */
};

#endif

/* Records and maps of bpf/trace_go.bpf.c (ebpf-trace's Go goroutines) that
 * user space reads: struct go_event on the `go_events` ring (ext/goroutines.pyx
 * builds the numpy dtype from it), the per-process `go_procs` entry and the
 * drop counter indices. */
#ifndef DKEBPF_TRACE_GO_H
#define DKEBPF_TRACE_GO_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* go_event.kind */
#define GO_EV_SWITCH 1    /* runtime.execute: goroutine `goid` now runs on thread `tid` */
#define GO_EV_NEWPROC 2   /* goroutine `goid` was created by goroutine `arg` */
#define GO_EV_ROUNDTRIP 3 /* goroutine `goid` entered net/http.(*persistConn).roundTrip(pc = `arg`) */
#define GO_EV_WRITELOOP 4 /* goroutine `goid` is the writeLoop of persistConn `arg` */

/* index into the per-CPU `go_drops` array */
#define GO_DROP_RING 0  /* go_events ring full: an event was lost */
#define GO_DROP_READ 1  /* a g's goid could not be read */
#define GO_DROP_MAPS 2  /* go_running / go_spawning update failed */
#define GO_DROP_MAX 3

/* Value of `go_procs` (key: tgid), written by user space for each traced
 * Go process: where its runtime.g keeps goid (its Go version's layout). */
struct go_proc {
	__u32 goid_off;
	__u32 _pad;
};

struct go_event {
	__u64 ts_ns;  /* bpf_ktime_get_ns() */
	__u64 goid;
	__u64 arg;    /* by kind, above */
	__u32 pid;    /* tgid */
	__u32 tid;
	__u8 kind;    /* GO_EV_* */
	__u8 _pad[7];
};

#endif

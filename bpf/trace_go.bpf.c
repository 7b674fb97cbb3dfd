// SPDX-License-Identifier: GPL-2.0
/* ebpf-trace for Go programs: which goroutine runs on which thread, who
 * created it, and which goroutine a net/http client request belongs to.
 * Uprobes (attached by user space to each traced Go binary, by file:
 * dkebpf/plugins/trace_go.py), for processes listed in `go_procs` only:
 *
 *   runtime.execute(gp *g, inheritTime bool)    GO_EV_SWITCH
 *     the scheduler starts gp on this thread (M). A thread keeps its
 *     goroutine until the next execute, syscalls included, so "the
 *     goroutine of thread T at time t" is the latest switch on T before t.
 *     Sent only when the thread's goroutine changes (go_running).
 *   runtime.newproc1(fn, callergp *g, callerpc) then
 *   runtime.runqput(pp *p, gp *g, next bool)   GO_EV_NEWPROC
 *     newproc (the `go` statement) calls newproc1, which makes the new g
 *     and gives it its goid, then runqput with it, on the same thread and
 *     on the system stack. The creator is kept per thread between the two
 *     (go_spawning), so runqput's other callers (wakeups) send nothing.
 *     (No return probe: a uretprobe rewrites the return address on the
 *     stack, which Go's stack copying and tracebacks do not expect.)
 *   net/http.(*persistConn).roundTrip(pc, req)  GO_EV_ROUNDTRIP
 *   net/http.(*persistConn).writeLoop(pc)       GO_EV_WRITELOOP
 *     the client transport's writeLoop goroutine writes the requests that
 *     roundTrip (in the caller's goroutine) hands it over a channel: user
 *     space gives a request written by goroutine W at time t to the
 *     goroutine of the latest roundTrip on W's persistConn before t.
 *
 * Where user space finds them, the execute and creation probes sit on the
 * `call` of casgstatus(gp, ...) inside execute and of newproc1 / runqput
 * inside newproc's closure instead of the functions' entries: a probed call
 * is emulated (one trap), a Go prologue single-stepped (two), and the
 * registers hold the same arguments (dkebpf/plugins/trace_go.py CALL_SITES).
 *
 * Go >= 1.17 on amd64 passes arguments in registers (ABIInternal: RAX,
 * RBX, RCX, ...) and keeps the running g in R14 (the user goroutine in
 * roundTrip and writeLoop; g0 in the scheduler functions, which get the
 * goroutine as an argument). goid's offset in runtime.g depends on the Go
 * version: go_procs[tgid].goid_off.
 */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "include/drops.bpf.h"
#include "include/trace_go.h"
#include "include/ring_wake.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define GO_RING_BYTES (1 << 22)
/* user space takes records once per step: wake it only when this much waits */
#define GO_WAKE_BYTES (GO_RING_BYTES / 16)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, GO_RING_BYTES);
} go_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tgid */
	__type(value, struct go_proc);
} go_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);   /* pid_tgid (a tid reused by another process is another key) */
	__type(value, __u64); /* goid last sent for it */
} go_running SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);   /* tid */
	__type(value, __u64); /* goid of the creator, between newproc1 and runqput */
} go_spawning SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); /* include/ring_wake.bpf.h */
} go_unqueried SEC(".maps");

DROP_COUNTERS(go_drops, GO_DROP_MAX);

/* goid of the g at `g` in process `tgid`, or 0 (not a traced Go process,
 * unreadable) */
static __always_inline __u64 goid_of(__u32 tgid, __u64 g)
{
	struct go_proc *p = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!p || !g)
		return 0;
	__u64 id = 0;
	if (bpf_probe_read_user(&id, sizeof(id), (void *)(g + p->goid_off))) {
		count_drop(&go_drops, GO_DROP_READ);
		return 0;
	}
	return id;
}

static __always_inline void send(__u64 pid_tgid, __u8 kind, __u64 goid, __u64 arg)
{
	__u32 zero = 0;
	__u32 *unqueried = bpf_map_lookup_elem(&go_unqueried, &zero);
	if (!unqueried)
		return;
	struct go_event ev = {
		.ts_ns = bpf_ktime_get_ns(), .goid = goid, .arg = arg,
		.pid = pid_tgid >> 32, .tid = (__u32)pid_tgid, .kind = kind,
	};
	__u64 flag = ring_wake_flag(&go_events, unqueried, sizeof(ev), GO_WAKE_BYTES);
	if (bpf_ringbuf_output(&go_events, &ev, sizeof(ev), flag))
		count_drop(&go_drops, GO_DROP_RING);
}

SEC("uprobe")
int go_execute(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 goid = goid_of(id >> 32, ctx->ax); /* RAX: gp */
	if (!goid)
		return 0;
	__u64 *cur = bpf_map_lookup_elem(&go_running, &id);
	if (cur && *cur == goid)
		return 0; /* the same goroutine again on this thread */
	if (bpf_map_update_elem(&go_running, &id, &goid, BPF_ANY))
		count_drop(&go_drops, GO_DROP_MAPS);
	send(id, GO_EV_SWITCH, goid, 0);
	return 0;
}

SEC("uprobe")
int go_newproc1(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 parent = goid_of(id >> 32, ctx->bx); /* RBX: callergp */
	if (!parent)
		return 0;
	__u32 tid = (__u32)id;
	if (bpf_map_update_elem(&go_spawning, &tid, &parent, BPF_ANY))
		count_drop(&go_drops, GO_DROP_MAPS);
	return 0;
}

SEC("uprobe")
int go_runqput(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u64 *parent = bpf_map_lookup_elem(&go_spawning, &tid);
	if (!parent)
		return 0; /* a wakeup, not a new goroutine */
	__u64 p = *parent;
	bpf_map_delete_elem(&go_spawning, &tid);
	__u64 child = goid_of(id >> 32, ctx->bx); /* RBX: gp */
	if (child)
		send(id, GO_EV_NEWPROC, child, p);
	return 0;
}

SEC("uprobe")
int go_roundtrip(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 goid = goid_of(id >> 32, ctx->r14); /* R14: the running g */
	if (goid)
		send(id, GO_EV_ROUNDTRIP, goid, ctx->ax); /* RAX: pc */
	return 0;
}

SEC("uprobe")
int go_writeloop(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 goid = goid_of(id >> 32, ctx->r14);
	if (goid)
		send(id, GO_EV_WRITELOOP, goid, ctx->ax);
	return 0;
}

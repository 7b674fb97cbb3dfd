// SPDX-License-Identifier: GPL-2.0
/* Empty programs for the floor of httpflow-tls (perf/bench_httpflow_tls.py,
 * perf/bench_tls_uprobe.py): the same program names as bpf/tls.bpf.c, so
 * that dkebpf/plugins/tls_probes.attach_library() puts them on exactly the
 * uprobes and uretprobes httpflow-tls uses; what they cost is the trap and
 * the uprobe machinery, not the work. */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define EMPTY_UPROBE(name) SEC("uprobe") int name(void *ctx) { return 0; }

EMPTY_UPROBE(ssl_read_enter)
EMPTY_UPROBE(ssl_write_enter)
EMPTY_UPROBE(ssl_read_ex_enter)
EMPTY_UPROBE(ssl_write_ex_enter)
EMPTY_UPROBE(ssl_handshake_enter)

SEC("uretprobe")
int ssl_leave(void *ctx) { return 0; }

/* the socket tracepoints of bpf/tls.bpf.c */
SEC("tp_btf/sock_send_length")
int BPF_PROG(tls_sock_send, struct sock *sk, int ret, int flags) { return 0; }
SEC("tp_btf/sock_recv_length")
int BPF_PROG(tls_sock_recv, struct sock *sk, int ret, int flags) { return 0; }
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tls_sock_destroy, struct sock *sk) { return 0; }

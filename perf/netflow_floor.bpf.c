// SPDX-License-Identifier: GPL-2.0
/* The floor under netflow's cost: empty programs on exactly the hooks
 * bpf/netflow.bpf.c uses (perf/bench_netflow_cost.py). What these cost,
 * netflow cannot go below whatever its programs do. */
#include "vmlinux/x86/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/sock_send_length")
int BPF_PROG(floor_send, struct sock *sk, int ret, int flags) { return 0; }
SEC("tp_btf/sock_recv_length")
int BPF_PROG(floor_recv, struct sock *sk, int ret, int flags) { return 0; }
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(floor_state, const struct sock *sk, int oldstate, int newstate) { return 0; }
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(floor_destroy, struct sock *sk) { return 0; }
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(floor_retransmit, const struct sock *sk) { return 0; }
/* cgroup sock_addr programs must allow (1) */
SEC("cgroup/sendmsg4")
int floor_sendmsg4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/sendmsg6")
int floor_sendmsg6(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/recvmsg4")
int floor_recvmsg4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/recvmsg6")
int floor_recvmsg6(struct bpf_sock_addr *ctx) { return 1; }

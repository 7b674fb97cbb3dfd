"""Cost of netflow's programs for unconnected UDP (each datagram's peer
from the cgroup sendmsg/recvmsg hooks): datagram round trips on loopback
(sendto + recvfrom of 32 bytes between two unconnected sockets of this
process), in rounds, each round running, in a rotating order:
  off        nothing attached;
  netflow    the collector's netflow.bpf.o (the installed package's),
             loaded and attached in this process (self_tgid 0: this
             process's datagrams are counted);
  netflow_old, with BENCH_COMPARE_OBJ=<an older netflow.bpf.o>: that one
             (e.g. with its syscall tracepoints), the same way.
Prints per mode the round trips/s as a median ratio against `off`, and
(bpf_stats(): the stats fd held for the run) ns per run of
each program and the BPF ns per round trip. Each mode checks that the
flows came out exact (both ends, every byte) before its figures count.

    python3 perf/bench_bpf_cost_udp.py   (BENCH_N=50000, BENCH_ROUNDS=5; root)
"""
import os
import socket
import statistics
import time

from bench_netflow_cost import compare_spec
from collector import bpf_stats, prog_stats

N = int(os.environ.get("BENCH_N", 50000))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
COMPARE_OBJ = os.environ.get("BENCH_COMPARE_OBJ")  # read by compare_spec too
MODES = ("off", "netflow") + (("netflow_old",) if COMPARE_OBJ else ())
SIZE = 32


def attach(mode):
    from dkebpf.bpf_objects import NETFLOW, BpfSkeleton
    if mode == "netflow":
        return BpfSkeleton(NETFLOW).start(knobs={"self_tgid": 0})
    return BpfSkeleton(compare_spec(), path=COMPARE_OBJ).start(knobs={"self_tgid": 0})


def check_flows(bpf, ports):
    """Both ends' flows exact: N datagrams of SIZE bytes each way."""
    from dkebpf import _records as R
    keys, vals = bpf.maps.conns.dump(R.KEY_DTYPE)
    stats = vals.view(R.STATS_DTYPE)
    mine = (stats["pid"] == os.getpid()) & (stats["proto"] == 17)
    got = sorted((int(s["lport"]), int(k["rport"]), int(s["bytes_sent"]), int(s["bytes_recv"]))
                 for k, s in zip(keys[mine], stats[mine]) if int(s["lport"]) in ports)
    a, b = ports
    want = sorted([(a, b, N * SIZE, 0), (b, a, 0, N * SIZE)])
    if got != want:
        raise SystemExit(f"flows not exact: {got} != {want}")


def round_trips():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    dest, data = b.getsockname(), b"x" * SIZE
    t0 = time.perf_counter()
    for _ in range(N):
        a.sendto(data, dest)
        b.recvfrom(64)
    dt = time.perf_counter() - t0
    ports = (a.getsockname()[1], b.getsockname()[1])
    a.close()
    b.close()
    return N / dt, ports


def run(mode):
    """(round trips/s, {program: (runs, ns)})"""
    if mode == "off":
        return round_trips()[0], {}
    bpf = attach(mode)
    try:
        before = prog_stats(os.getpid())
        rate, ports = round_trips()
        after = prog_stats(os.getpid())
        check_flows(bpf, ports)
        names = {p.fd: p.name for p in bpf.obj.programs()}
        ids = {}
        for fd, name in names.items():
            with open(f"/proc/self/fdinfo/{fd}") as f:
                ids[next(int(x.split()[1]) for x in f if x.startswith("prog_id:"))] = name
        progs = {}
        for pid_, (cnt, ns, _) in after.items():
            c0, n0, _ = before.get(pid_, (0, 0, 0))
            if pid_ in ids and cnt - c0:
                progs[ids[pid_]] = (cnt - c0, ns - n0)
        return rate, progs
    finally:
        bpf.close()


def main():
    from dkebpf import kernel
    kernel.ensure_mounts()
    ratios = {m: [] for m in MODES[1:]}
    bpf_ns = {m: [] for m in MODES[1:]}
    last = {}
    with bpf_stats():
        round_trips()  # warm-up
        for r in range(ROUNDS):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            got = {m: run(m) for m in order}
            for m in MODES[1:]:
                ratios[m].append(got[m][0] / got["off"][0])
                bpf_ns[m].append(sum(ns for _, ns in got[m][1].values()) / N)
                last[m] = got[m][1]
            print(f"round {r}: " + ", ".join(f"{m} {got[m][0]:.0f}/s" for m in MODES), flush=True)
    for m in MODES[1:]:
        for name, (cnt, ns) in sorted(last[m].items(), key=lambda kv: -kv[1][1]):
            print(f"{m} {name}: {cnt / N:.2f}/round trip {ns / cnt:.0f} ns/run")
        print(f"{m}_round_trip_ratio_median: {statistics.median(ratios[m]):.3f}")
        print(f"{m}_bpf_ns_per_round_trip_median: {statistics.median(bpf_ns[m]):.0f}")
    print(f"load_average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""What netflow costs the traffic it watches: nginx (1 worker) + wrk -t2
-c32 on loopback, in rounds, each round running, in a rotating order:
  off      nothing attached;
  floor    empty programs on exactly netflow's hooks (perf/netflow_floor.bpf.c:
           five tp_btf, four cgroup sock_addr on the root cgroup v2);
  netflow  the installed collector, `dkebpf run --enabled ebpf-net
           --l7net-disabled httpflow` (netflow, and dnsflow's packet socket).
With BENCH_COMPARE_OBJ=<an older netflow.bpf.o> two more modes compare
the kernel side alone (objects loaded and attached, nothing read):
  bpf_new  the installed package's netflow.bpf.o;
  bpf_old  that older object (attached by its sections, e.g. with its
           syscall tracepoints).
Per round the requests/s and mean latency of each mode as ratios against
that round's `off`; then the medians, the collector's CPU and the
load average. The UDP side (the cgroup hooks' cost) is
perf/bench_bpf_cost_udp.py.

    python3 perf/bench_netflow_cost.py   (BENCH_SECONDS=10, BENCH_ROUNDS=5; root, nginx, wrk)

Prints `name: value` lines.
"""
import os
import statistics
import subprocess
import tempfile

from collector import Collector
from bench_httpflow_e2e import wrk
from support.nginx import Nginx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
COMPARE_OBJ = os.environ.get("BENCH_COMPARE_OBJ")
MODES = ("off", "floor", "netflow") + (("bpf_new", "bpf_old") if COMPARE_OBJ else ())
FLOOR_CGROUP = ("floor_sendmsg4", "floor_sendmsg6", "floor_recvmsg4", "floor_recvmsg6")


def build_floor(out_dir):
    obj = os.path.join(out_dir, "netflow_floor.bpf.o")
    subprocess.check_call(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
                           "-I", os.path.join(ROOT, "bpf"), "-c", os.path.join(HERE, "netflow_floor.bpf.c"),
                           "-o", obj])
    return obj


def run_mode(mode, tmp, floor_obj, port, rnd):
    """(requests/s, mean latency s, collector CPU s or None)"""
    if mode == "off":
        rps, lat, _ = wrk(port)
        return rps, lat, None
    if mode == "floor":
        from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec
        with BpfSkeleton(ObjectSpec("netflow_floor", cgroup=FLOOR_CGROUP), path=floor_obj).start():
            rps, lat, _ = wrk(port)
        return rps, lat, None
    if mode in ("bpf_new", "bpf_old"):
        from dkebpf.bpf_objects import NETFLOW, ObjectSpec, BpfSkeleton
        spec = NETFLOW if mode == "bpf_new" else ObjectSpec("netflow", knobs=("self_tgid",))
        path = None if mode == "bpf_new" else COMPARE_OBJ
        with BpfSkeleton(spec, path=path).start(knobs={"self_tgid": os.getpid()}):
            rps, lat, _ = wrk(port)
        return rps, lat, None
    with Collector(tmp, f"netflow-{rnd}", ["--enabled", "ebpf-net", "--l7net-disabled", "httpflow"]) as c:
        c0 = c.cpu_seconds()
        rps, lat, _ = wrk(port)
        return rps, lat, c.cpu_seconds() - c0


def main():
    from dkebpf import kernel
    kernel.ensure_mounts()
    ratios = {m: {"rps": [], "lat": []} for m in MODES[1:]}
    cpu = []
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        floor_obj = build_floor(tmp)
        wrk(ngx.port)  # warm-up
        print(f"wrk: -t2 -c32 -d{SECONDS}s, nginx 1 worker, loopback, {ROUNDS} rounds", flush=True)
        for r in range(ROUNDS):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            got = {m: run_mode(m, tmp, floor_obj, ngx.port, r) for m in order}
            base_rps, base_lat, _ = got["off"]
            for m in MODES[1:]:
                ratios[m]["rps"].append(got[m][0] / base_rps)
                ratios[m]["lat"].append(got[m][1] / base_lat)
            cpu.append(got["netflow"][2] / SECONDS / (got["netflow"][0] / 1e4))
            print(f"round {r} ({' '.join(order)}): " + ", ".join(
                f"{m} {got[m][0]:.0f} req/s {got[m][1] * 1e3:.3f} ms" for m in MODES), flush=True)
    for m in MODES[1:]:
        print(f"{m}_throughput_ratio_median: {statistics.median(ratios[m]['rps']):.3f}")
        print(f"{m}_throughput_ratios: {' '.join(f'{x:.3f}' for x in ratios[m]['rps'])}")
        print(f"{m}_latency_ratio_median: {statistics.median(ratios[m]['lat']):.3f}")
    print(f"netflow_collector_cpu_per_10k_rps_median: {statistics.median(cpu):.4f}")
    print(f"load_average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

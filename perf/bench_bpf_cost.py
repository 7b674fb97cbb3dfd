"""In-kernel cost of the collector's BPF programs under a fixed loopback
HTTP load: nginx (1 worker) + wrk -t2 -c32 against it, with the collector
(ebpf-net: netflow only, then netflow + httpflow) attached, or with the
ring-write floors of perf/tpfloor.bpf.c (an empty program on httpflow's
hooks that writes one exchange-sized record per send, to one shared ring
or a ring per CPU, drained in batches: what the ring write alone costs).

Inside bpf_stats() (the BPF_ENABLE_STATS fd) the kernel counts run_cnt
and run_time_ns per program. For each program this prints ns per
invocation, invocations per request and ns per request, and the total BPF
ns per request per mode; with BENCH_COST_ROUNDS > 1 the modes alternate
and each figure is the median over rounds.

    python3 perf/bench_bpf_cost.py
    BENCH_SECONDS=10 BENCH_COST_ROUNDS=1
    BENCH_MODES=netflow_only,httpflow,floor_record_shared,floor_record_percpu
    BENCH_COST_CLOSE=1          wrk sends "Connection: close": a connection
                                per request (prices creating and ending a
                                connection's entry: http_destroy)
    BENCH_COMPARE_HTTP_OBJ=/path/old/http.bpf.o   adds mode httpflow_compare
                                (bench_httpflow_e2e.installed_object), same run;
                                name=/path/a.bpf.o,...: modes httpflow_<name>
    BENCH_COMPARE_NETFLOW_OBJ=name=/path/a.bpf.o,...   modes netflow_<name>
                                (netflow_only with that netflow.bpf.o)
    BENCH_ABLATE=1,2 / BENCH_NETFLOW_ABLATE=1,2   modes httpflow_ablate<n> /
                                netflow_ablate<n> (bench_httpflow_e2e's)

Needs root, nginx, wrk, bpftool.
"""
import os
import statistics
import tempfile
import time

from bench_httpflow_e2e import COMPARE_HTTP_OBJS, COMPARE_NETFLOW_OBJS, build_ablations, mode_env
from bench_tracepoint_floor import attached
from collector import Collector, bpf_stats, build_bpf, prog_cost, prog_stats, wrk as wrk_url
from support.nginx import Nginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
ROUNDS = int(os.environ.get("BENCH_COST_ROUNDS", 1))
CLOSE = os.environ.get("BENCH_COST_CLOSE", "0") == "1"
FLOOR_MODES = ("floor_record_shared", "floor_record_percpu")


def collector_modes():
    """{mode: the collector's flags} (after build_ablations)."""
    return {"netflow_only": ["--l7net-disabled", "httpflow"], "httpflow": [],
            **{name: [] for name in COMPARE_HTTP_OBJS},
            **{name: ["--l7net-disabled", "httpflow"] for name in COMPARE_NETFLOW_OBJS}}


def wrk(port):
    return wrk_url(f"http://127.0.0.1:{port}/ok", SECONDS, args=("-H", "Connection: close") if CLOSE else ())


def run(tmp, port, mode, floor_obj, r):
    """(requests/s, requests, prog_cost rows) of one wrk run in `mode`."""
    if mode in FLOOR_MODES:
        floor = attached(floor_obj, mode)
        try:
            before = prog_stats(os.getpid())
            rps, _, total = wrk(port)
            rows = prog_cost(before, prog_stats(os.getpid()), total)
        finally:
            floor.close()
        return rps, total, [(f"tpfloor:{name.split(':', 1)[1]}", *rest) for name, *rest in rows]
    with mode_env(mode), Collector(tmp, f"{mode}-{r}", ["--enabled", "ebpf-net", *collector_modes()[mode]]) as c:
        time.sleep(1)
        before = c.prog_stats()
        rps, _, total = wrk(port)
        return rps, total, prog_cost(before, c.prog_stats(), total)


def main():
    from dkebpf import kernel
    kernel.ensure_mounts()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_ablations(tmp)
        modes = os.environ.get("BENCH_MODES", ",".join((*collector_modes(), *FLOOR_MODES))).split(",")
        unknown = [m for m in modes if m not in collector_modes() and m not in FLOOR_MODES]
        if unknown:
            raise SystemExit(f"BENCH_MODES: unknown modes {unknown}")
        measure(tmp, modes, res)
    report(modes, res)


def measure(tmp, modes, res):
    """The rounds: res[mode] gets (requests/s, requests, prog_cost rows)
    of each."""
    with bpf_stats(), Nginx(tmp) as ngx:
        floor_obj = build_bpf("tpfloor", tmp)
        wrk(ngx.port)  # warm-up
        print(f"wrk -t2 -c32 -d{SECONDS}s{' Connection: close' if CLOSE else ''}, {ROUNDS} rounds")
        for r in range(ROUNDS):
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                rps, total, rows = run(tmp, ngx.port, mode, floor_obj, r)
                res.setdefault(mode, []).append((rps, total, rows))
                print(f"round {r} {mode}: {rps:.0f} req/s, {total} requests, "
                      f"{sum(x[3] for x in rows):.0f} BPF ns/request", flush=True)


def report(modes, res):
    """Per mode the medians over rounds, per program and in all."""
    for mode in modes:
        runs = res[mode]
        print(f"== {mode}: median of {len(runs)}: {statistics.median(x[0] for x in runs):.0f} req/s")
        print(f"{'program':28} {'runs/req':>9} {'ns/run':>8} {'ns/req':>8}")
        names = sorted({row[0] for x in runs for row in x[2]}, key=lambda n: -max(
            row[3] for x in runs for row in x[2] if row[0] == n))
        for name in names:
            rows = [row for x in runs for row in x[2] if row[0] == name]
            med = [statistics.median(row[i] for row in rows) for i in (1, 2, 3)]
            print(f"{name:28} {med[0]:9.2f} {med[1]:8.0f} {med[2]:8.0f}")
        print(f"{mode}_bpf_ns_per_request: {statistics.median(sum(row[3] for row in x[2]) for x in runs):.0f}")
    print(f"load_average: {os.getloadavg()}")


if __name__ == "__main__":
    main()

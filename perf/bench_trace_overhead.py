"""What ebpf-trace costs an HTTP server: nginx (1 worker) + wrk on loopback
with the collector off, with `dkebpf run --enabled ebpf-net` (httpflow, the
capture ebpf-trace is compared with) and with `--enabled ebpf-trace`, in the
same run, alternating, BENCH_ROUNDS rounds; medians. Needs root, nginx, wrk.

Traced: this benchmark's own processes only. It runs with a variable of its
own in its environment and the collector with `--trace-env-list` of it, so
this process is traced and nginx and wrk, started by it after the
collector, inherit that at fork (nginx overwrites its environment with its
title, so it could not be chosen by it): on a shared machine other
people's nginx and wrk are not measured. BENCH_TRACE_ALL=1 traces every
process instead (the collector's default).

Prints `name: value` lines: throughput and latency ratios, the collector's
CPU per 10k requests/s, spans reported per wrk request (both ends: 2) and
every loss counter.

BENCH_INTERVAL: the collector's interval (2s). BENCH_PROG_COST=1: with
kernel.bpf_stats_enabled, the ns per request of each trace program (the
clock reads it costs make the ratios then a little worse).
BENCH_TRACE_BASELINE=<tree>: also run that tree's installed collector
(<tree>/.venv, e.g. /work/main) with --enabled ebpf-trace in every round,
right after this one: ratios of the two in the same rounds.

    python3 perf/bench_trace_overhead.py   (BENCH_SECONDS=10, BENCH_ROUNDS=3, BENCH_CONNS=32)
"""
import os
import statistics
import sys
import tempfile
import time

from collector import Collector, bpf_stats, prog_cost, stats_already_on, wrk as wrk_url
from support.nginx import Nginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
CONNS = int(os.environ.get("BENCH_CONNS", 32))
MARK = "DKEBPF_TRACE_BENCH"
TRACE_ARGS = [] if os.environ.get("BENCH_TRACE_ALL") == "1" else ["--trace-env-list", MARK]
INTERVAL = os.environ.get("BENCH_INTERVAL", "2s")
PROG_COST = os.environ.get("BENCH_PROG_COST") == "1"
BASELINE = os.environ.get("BENCH_TRACE_BASELINE")


def wrk(tmp):
    """nginx started now (after any collector), then wrk against it."""
    with Nginx(tmp) as ngx:
        return wrk_url(f"http://127.0.0.1:{ngx.port}/ok", SECONDS, CONNS)


def spans_in(path):
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.startswith(b"dketrace"))


def main():
    if os.environ.get(MARK) != str(os.getpid()):
        # /proc/<pid>/environ shows the environment a process was started
        # with (not os.environ's changes): start again with the variable
        # (perf/collector.py makes a relative PYTHONPATH absolute for the
        # collectors it starts in the temporary directory)
        env = {**os.environ, MARK: str(os.getpid())}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    stats_already_on()
    runs = {"trace": sys.executable}
    if BASELINE:
        runs["baseline"] = os.path.join(os.path.abspath(BASELINE), ".venv", "bin", "python")
        if not os.access(runs["baseline"], os.X_OK):
            raise SystemExit(f"BENCH_TRACE_BASELINE: {runs['baseline']} is missing (make install in that tree)")
    off, lat_off, http = [], [], []
    res = {name: {"rps": [], "lat": [], "cpu": [], "per_req": [], "lost": [], "cost": [], "peak": [], "rss": []} for name in runs}
    with tempfile.TemporaryDirectory() as tmp, (bpf_stats() if PROG_COST else _nothing()):
        wrk(tmp)  # warm-up
        for r in range(ROUNDS):
            rps, lat, _ = wrk(tmp)
            off.append(rps)
            lat_off.append(lat)
            with Collector(tmp, f"httpflow{r}", ["--enabled", "ebpf-net"], interval=INTERVAL):
                http.append(wrk(tmp)[0])
            for name, python in runs.items():
                run_trace(tmp, f"{name}{r}", python, res[name])
    import dkebpf
    print(f"dkebpf from {os.path.dirname(dkebpf.__file__)}; baseline: {runs.get('baseline', 'none')}")
    print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s, nginx 1 worker, loopback; {ROUNDS} rounds; interval {INTERVAL}; "
          f"traced: {'all' if not TRACE_ARGS else 'this benchmark, nginx and wrk'}; "
          f"load average {os.getloadavg()[0]:.2f}{'; bpf_stats on' if PROG_COST else ''}")
    print(f"off_requests_per_s: {statistics.median(off):.0f} {[round(x) for x in off]}")
    print(f"httpflow_requests_per_s: {statistics.median(http):.0f} {[round(x) for x in http]}")
    print(f"httpflow_throughput_ratio: {statistics.median([a / b for a, b in zip(http, off)]):.3f}")
    for name, v in res.items():
        on = v["rps"]
        print(f"{name}_requests_per_s: {statistics.median(on):.0f} {[round(x) for x in on]}")
        print(f"{name}_throughput_ratio: {statistics.median([a / b for a, b in zip(on, off)]):.3f}")
        print(f"{name}_vs_httpflow_ratio: {statistics.median([a / b for a, b in zip(on, http)]):.3f}")
        print(f"{name}_latency_ratio: {statistics.median([a / b for a, b in zip(v['lat'], lat_off)]):.3f}")
        print(f"{name}_collector_cpu_per_10k_rps: {statistics.median(v['cpu']):.3f}")
        print(f"{name}_spans_per_request: {statistics.median(v['per_req']):.3f} {[round(x, 3) for x in v['per_req']]}")
        print(f"{name}_losses (non-zero): {v['lost']}")
        print(f"{name}_collector_peak_rss_mib: {statistics.median(v['rss']):.0f} {[round(x) for x in v['rss']]}")
        if any(v["peak"]):  # the most the kernel ring held when read (of TRACE_RING_BYTES)
            print(f"{name}_ring_peak_mib: {[round(x, 1) for x in v['peak']]}")
        if PROG_COST:
            # the median round's ns per request of each program
            for prog, rows in sorted(_by_prog(v["cost"]).items(), key=lambda kv: -statistics.median(kv[1])):
                print(f"{name}_prog_ns_per_request {prog}: {statistics.median(rows):.0f}")
    if BASELINE:
        t, b = res["trace"], res["baseline"]
        print(f"trace_vs_baseline_throughput: {statistics.median([x / y for x, y in zip(t['rps'], b['rps'])]):.3f}")
        print(f"trace_vs_baseline_cpu_per_10k_rps: "
              f"{statistics.median([x / y for x, y in zip(t['cpu'], b['cpu'])]):.3f}")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _by_prog(rounds):
    out = {}
    for rows in rounds:
        for name, _, _, ns_per_req in rows:
            out.setdefault(name.split(":", 1)[-1], []).append(ns_per_req)
    return out


def peak_rss_mib(pid):
    """The collector's peak resident memory (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run_trace(tmp, name, python, v):
    """One round of `python -m dkebpf run --enabled ebpf-trace` under wrk:
    throughput, latency, CPU, spans per request, losses (and the programs'
    cost) appended to v."""
    c = Collector(tmp, name, ["--enabled", "ebpf-trace", *TRACE_ARGS], interval=INTERVAL)
    c.cmd[0] = python
    with c:
        time.sleep(1.5)  # the collector's first /proc scan has marked this process
        c0 = c.cpu_seconds()
        p0 = c.prog_stats() if PROG_COST else None
        rps, lat, total = wrk(tmp)
        cpu = (c.cpu_seconds() - c0) / SECONDS / (rps / 1e4)
        if PROG_COST:
            v["cost"].append(prog_cost(p0, c.prog_stats(), max(total, 1)))
        time.sleep(5)  # the last responses settle and are reported
        m = c.metrics()
        out = c.out
        v["rss"].append(peak_rss_mib(c.pid))
    v["rps"].append(rps)
    v["lat"].append(lat)
    v["cpu"].append(cpu)
    v["per_req"].append(spans_in(out) / max(total, 1))
    v["peak"].append(m.get(("ebpf-trace", "ring_events_peak_bytes"), 0) / (1 << 20))
    v["lost"].append({k: int(x) for (p, k), x in m.items()
                      if p == "ebpf-trace" and ("kernel_drop" in k or "evicted" in k or "expired" in k) and x})

if __name__ == "__main__":
    main()

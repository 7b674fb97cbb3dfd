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

    python3 perf/bench_trace_overhead.py   (BENCH_SECONDS=10, BENCH_ROUNDS=3, BENCH_CONNS=32)
"""
import os
import statistics
import sys
import tempfile
import time

from collector import Collector, wrk as wrk_url
from support.nginx import Nginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
CONNS = int(os.environ.get("BENCH_CONNS", 32))
MARK = "DKEBPF_TRACE_BENCH"
TRACE_ARGS = [] if os.environ.get("BENCH_TRACE_ALL") == "1" else ["--trace-env-list", MARK]


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
    off, on, lat_off, lat_on, cpu, per_req, lost, http = [], [], [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        wrk(tmp)  # warm-up
        for r in range(ROUNDS):
            rps, lat, _ = wrk(tmp)
            off.append(rps)
            lat_off.append(lat)
            with Collector(tmp, f"httpflow{r}", ["--enabled", "ebpf-net"]):
                http.append(wrk(tmp)[0])
            with Collector(tmp, f"trace{r}", ["--enabled", "ebpf-trace", *TRACE_ARGS]) as c:
                time.sleep(1.5)  # the collector's first /proc scan has marked this process
                c0 = c.cpu_seconds()
                rps, lat, total = wrk(tmp)
                cpu.append((c.cpu_seconds() - c0) / SECONDS / (rps / 1e4))
                time.sleep(5)  # the last responses settle and are reported
                m = c.metrics()
                out = c.out
            on.append(rps)
            lat_on.append(lat)
            per_req.append(spans_in(out) / max(total, 1))
            lost.append({k: int(v) for (p, k), v in m.items()
                         if p == "ebpf-trace" and ("kernel_drop" in k or "evicted" in k or "expired" in k) and v})
    import dkebpf
    print(f"dkebpf from {os.path.dirname(dkebpf.__file__)}")
    print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s, nginx 1 worker, loopback; {ROUNDS} rounds; traced: "
          f"{'all' if not TRACE_ARGS else 'this benchmark, nginx and wrk'}; load average {os.getloadavg()[0]:.2f}")
    print(f"off_requests_per_s: {statistics.median(off):.0f} {[round(x) for x in off]}")
    print(f"httpflow_requests_per_s: {statistics.median(http):.0f} {[round(x) for x in http]}")
    print(f"trace_requests_per_s: {statistics.median(on):.0f} {[round(x) for x in on]}")
    print(f"httpflow_throughput_ratio: {statistics.median([a / b for a, b in zip(http, off)]):.3f}")
    print(f"trace_throughput_ratio: {statistics.median([a / b for a, b in zip(on, off)]):.3f}")
    print(f"trace_vs_httpflow_ratio: {statistics.median([a / b for a, b in zip(on, http)]):.3f}")
    print(f"trace_latency_ratio: {statistics.median([a / b for a, b in zip(lat_on, lat_off)]):.3f}")
    print(f"trace_collector_cpu_per_10k_rps: {statistics.median(cpu):.3f}")
    print(f"trace_spans_per_request: {statistics.median(per_req):.3f} {[round(x, 3) for x in per_req]}")
    print(f"trace_losses (non-zero): {lost}")


if __name__ == "__main__":
    main()

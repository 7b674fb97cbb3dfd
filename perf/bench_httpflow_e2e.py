"""End-to-end cost of httpflow: nginx + wrk on loopback with the collector
off, with ebpf-net minus httpflow (netflow only), and with ebpf-net
including httpflow. Needs root, nginx and wrk.

Reports, per collector mode, wrk's requests/s and mean latency as ratios
against the run without the collector, the collector's CPU (user + system,
from /proc/<pid>/stat) per 10k requests/s, and for httpflow the records the
kernel sent, the requests reported in the points, and every loss counter
(kernel ring full, user-space buffer full).

    python3 perf/bench_httpflow_e2e.py        (BENCH_SECONDS=10 by default)

Prints `name: value` lines.
"""
import os
import tempfile
import time

from collector import Collector, wrk as wrk_url
from support.nginx import Nginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
CONNS = int(os.environ.get("BENCH_CONNS", 32))


def wrk(port):
    return wrk_url(f"http://127.0.0.1:{port}/ok", SECONDS, CONNS)


def run_with_collector(tmp, port, name, extra):
    with Collector(tmp, name, ["--enabled", "ebpf-net", *extra]) as c:
        c0, before = c.cpu_seconds(), c.prog_stats()
        rps, lat, total = wrk(port)
        cpu = c.cpu_seconds() - c0
        misses = sum(st[2] - before.get(i, (0, 0, 0))[2] for i, st in c.prog_stats().items())
        time.sleep(4)  # two more intervals: every pair settled and reported
        m = c.metrics()
    return rps, lat, total, cpu, m, c.reported_requests(port), misses


def main():
    with tempfile.TemporaryDirectory() as tmp:
        with Nginx(tmp) as ngx:
            wrk(ngx.port)  # warm-up
            base_rps, base_lat, _ = wrk(ngx.port)
            print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s, nginx 1 worker, loopback")
            print(f"off_requests_per_s: {base_rps:.0f}")
            print(f"off_latency_ms: {base_lat * 1e3:.3f}")
            for name, extra in (("netflow_only", ["--l7net-disabled", "httpflow"]), ("httpflow", [])):
                rps, lat, total, cpu, m, reported, misses = run_with_collector(tmp, ngx.port, name, extra)
                print(f"{name}_requests_per_s: {rps:.0f}")
                print(f"{name}_throughput_ratio: {rps / base_rps:.3f}")
                print(f"{name}_latency_ratio: {lat / base_lat:.3f}")
                print(f"{name}_collector_cpu_cores: {cpu / SECONDS:.3f}")
                print(f"{name}_collector_cpu_per_10k_rps: {cpu / SECONDS / (rps / 1e4):.3f}")
                if name == "httpflow":
                    h = "ebpf-net/httpflow"
                    lost = {k: int(v) for (p, k), v in m.items() if p == h and ("lost" in k or "kernel_drop" in k)}
                    print(f"httpflow_wrk_requests: {total}")
                    print(f"httpflow_requests_reported_each_side: {reported / 2:.0f}")
                    print(f"httpflow_records_received: {int(m.get((h, 'ring_events_received'), 0))}")
                    print(f"httpflow_bpf_recursion_misses: {misses}")
                    print(f"httpflow_events_lost: {sum(lost.values())} {lost}")
                    print("httpflow_pipeline: " + " ".join(f"{k[5:]}={int(v)}" for (p, k), v in sorted(m.items())
                                                         if p == h and k.startswith("http_")))


if __name__ == "__main__":
    main()

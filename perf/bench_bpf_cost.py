"""In-kernel cost of the collector's BPF programs under a fixed loopback
HTTP load: nginx (1 worker) + wrk -t2 -c32 against it, with the collector
(ebpf-net: netflow only, then netflow + httpflow) attached.

With kernel.bpf_stats_enabled=1 (restored afterwards) the kernel counts
run_cnt and run_time_ns per program; bpftool shows them. For each program
of the collector's process this prints ns per invocation, invocations per
request and ns per request, and the total BPF ns per request per mode.

    python3 perf/bench_bpf_cost.py     (BENCH_SECONDS=10, BENCH_MODES=netflow_only,httpflow)

Needs root, nginx, wrk, bpftool.
"""
import os
import tempfile

from bench_httpflow_e2e import prog_cost_run, wrk
from collector import bpf_stats
from support.nginx import Nginx

MODES = {"netflow_only": ["--l7net-disabled", "httpflow"], "httpflow": []}


def main():
    with bpf_stats(), tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        wrk(ngx.port)  # warm-up
        for mode in os.environ.get("BENCH_MODES", ",".join(MODES)).split(","):
            rps, total, rows = prog_cost_run(tmp, ngx.port, mode, MODES[mode])
            print(f"== {mode}: {rps:.0f} req/s, {total} requests")
            print(f"{'program':28} {'runs/req':>9} {'ns/run':>8} {'ns/req':>8}")
            for name, per_req, ns_run, ns_req in rows:
                print(f"{name:28} {per_req:9.2f} {ns_run:8.0f} {ns_req:8.0f}")
            print(f"{mode}_bpf_ns_per_request: {sum(r[3] for r in rows):.0f}")


if __name__ == "__main__":
    main()

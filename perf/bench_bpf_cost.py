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
import json
import os
import subprocess
import tempfile

from bench_httpflow_e2e import wrk
from collector import Collector
from support.nginx import Nginx

MODES = {"netflow_only": ["--l7net-disabled", "httpflow"], "httpflow": []}
STATS = "/proc/sys/kernel/bpf_stats_enabled"


def bpftool(*args):
    return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True).stdout)


def prog_names(ids):
    """prog_id -> "object:name"; the object told by the maps it uses."""
    maps = {m["id"]: m.get("name", "") for m in bpftool("map", "show")}
    names = {}
    for p in bpftool("prog", "show"):
        if p["id"] in ids:
            used = {maps.get(i, "") for i in p.get("map_ids", [])}
            obj = "http" if used & {"http_conns", "calls"} else "tls" if any("tls" in u for u in used) else "netflow"
            names[p["id"]] = f"{obj}:{p.get('name', p['id'])}"
    return names


def run(tmp, port, mode):
    with Collector(tmp, mode, ["--enabled", "ebpf-net", *MODES[mode]]) as c:
        before = c.prog_stats()
        rps, _, total = wrk(port)
        after = c.prog_stats()
        names = prog_names(set(after))
    rows = []
    for pid_, (cnt, ns, _) in after.items():
        c0, n0, _ = before.get(pid_, (0, 0, 0))
        rows.append((names.get(pid_, str(pid_)), cnt - c0, ns - n0))
    return rps, total, rows


def main():
    old = open(STATS).read().strip()
    with open(STATS, "w") as f:
        f.write("1")
    try:
        with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
            wrk(ngx.port)  # warm-up
            for mode in os.environ.get("BENCH_MODES", ",".join(MODES)).split(","):
                rps, total, rows = run(tmp, ngx.port, mode)
                print(f"== {mode}: {rps:.0f} req/s, {total} requests")
                print(f"{'program':28} {'runs/req':>9} {'ns/run':>8} {'ns/req':>8}")
                sum_ns = 0
                for name, cnt, ns in sorted(rows, key=lambda r: -r[2]):
                    if not cnt:
                        continue
                    sum_ns += ns
                    print(f"{name:28} {cnt / total:9.2f} {ns / cnt:8.0f} {ns / total:8.0f}")
                print(f"{mode}_bpf_ns_per_request: {sum_ns / total:.0f}")
    finally:
        with open(STATS, "w") as f:
            f.write(old)


if __name__ == "__main__":
    main()

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
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)
from support.nginx import Nginx, free_port  # noqa: E402
from bench_httpflow_e2e import wrk  # noqa: E402

MODES = {"netflow_only": ["--l7net-disabled", "httpflow"], "httpflow": []}
STATS = "/proc/sys/kernel/bpf_stats_enabled"


def bpftool(*args):
    return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True).stdout)


def prog_fds(pid):
    """{prog_id: (run_cnt, run_time_ns)} of the BPF programs whose fds pid
    holds (fdinfo of a bpf-prog fd carries the kernel's counters)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            info = dict(line.split(":", 1) for line in open(f"/proc/{pid}/fdinfo/{fd}").read().splitlines())
        except OSError:
            continue
        out[int(info["prog_id"])] = (int(info["run_cnt"]), int(info["run_time_ns"]))
    return out


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
    log = os.path.join(tmp, f"dkebpf-{mode}.log")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "dkebpf", "run", "--enabled", "ebpf-net", "--interval", "2s",
                             "--output", os.path.join(tmp, f"points-{mode}.lp"), "--log", log,
                             "--pprof-port", str(free_port()), *MODES[mode]],
                            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while "dkebpf started" not in (open(log).read() if os.path.exists(log) else ""):
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"collector did not start: {open(log).read() if os.path.exists(log) else ''}")
            time.sleep(0.1)
        before = prog_fds(proc.pid)
        rps, _, total = wrk(port)
        after = prog_fds(proc.pid)
        names = prog_names(set(after))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    rows = []
    for pid_, (cnt, ns) in after.items():
        c0, n0 = before.get(pid_, (0, 0))
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

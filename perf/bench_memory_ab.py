"""Idle memory of two builds of the collector, started alternately (A/B,
same machine state): VmRSS, RssAnon, RssFile 1 s after the second flush
(`ebpf-net`, --interval 10s; 2 s of light HTTP once it has started, so
that the first flush aggregates), VmRSS every second from then until the
third flush (median and max: what stays resident between flushes, while
the host's own traffic reaches the collector), and the numpy + pyarrow
floor, per round and as medians.

    BENCH_BEFORE=/path/to/old/site-packages BENCH_AFTER=. python3 perf/bench_memory_ab.py

Each side runs `python -m dkebpf` with its directory first on PYTHONPATH
(empty: the installed package). Needs root, nginx, wrk.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_memory import MB, baseline, flushes, status, wait_flushes
from support.nginx import Nginx, free_port

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
SIDES = {"before": os.environ.get("BENCH_BEFORE", ""), "after": os.environ.get("BENCH_AFTER", "")}


def idle(tmp, tag, pythonpath, url):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(pythonpath) if pythonpath else "")
    log, port = os.path.join(tmp, f"{tag}.log"), free_port()
    p = subprocess.Popen([sys.executable, "-m", "dkebpf", "run", "--interval", "10s", "--output",
                          os.path.join(tmp, f"{tag}.lp"), "--log", log, "--pprof-port", str(port),
                          "--enabled", "ebpf-net"], cwd=tmp, env=env)
    try:
        while not (os.path.exists(log) and "dkebpf started" in open(log).read()):
            if p.poll() is not None:
                raise SystemExit(f"bench_memory_ab: {tag} did not start: {open(log).read()}")
            time.sleep(0.2)
        subprocess.run(["wrk", "-t1", "-c4", "-d2s", url], capture_output=True, check=True)
        wait_flushes(port, 2, 10)
        after_flush, between = status(p.pid), []
        while flushes(port) < 3:
            between.append(status(p.pid)["VmRSS"])
            time.sleep(1)
        between.sort()
        return dict(after_flush, between_median=between[len(between) // 2], between_max=between[-1])
    finally:
        p.terminate()
        p.wait(30)


def main():
    res = {"floor": [], "before": [], "after": []}
    print(f"loadavg: {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        url = f"http://127.0.0.1:{ngx.port}/ok"
        for r in range(ROUNDS):
            res["floor"].append(baseline())
            for side, path in SIDES.items():
                res[side].append(idle(tmp, f"{side}{r}", path, url))
            print(f"round {r}: " + " ".join(f"{k}={v[-1]['VmRSS'] / MB:.1f}" for k, v in res.items())
                  + " between (median/max) " + " ".join(
                      f"{k}={res[k][-1]['between_median'] / MB:.1f}/{res[k][-1]['between_max'] / MB:.1f}" for k in SIDES)
                  + f" loadavg={os.getloadavg()[0]:.1f}", flush=True)
    for side, rows in res.items():
        for key in ("VmRSS", "RssAnon", "RssFile") + (("between_median", "between_max") if side != "floor" else ()):
            print(f"{side}_idle_{key}_mb: {statistics.median(x[key] for x in rows) / MB:.1f}")


if __name__ == "__main__":
    main()

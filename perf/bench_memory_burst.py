"""What stays resident after a burst of work in the middle of an interval,
until the next flush, for two builds started alternately (A/B): the
collector (`ebpf-net`, --interval 15s) flushes once at 15 s, takes 2 s of
light HTTP at 17 s, and VmRSS is read every second from then until just
before the second flush (29 s). The burst's steps fault the libraries'
pages back in; a build that releases them only at a flush holds them
until then.

    BENCH_BEFORE=/path/to/old/site-packages BENCH_AFTER=. python3 perf/bench_memory_burst.py

Each side runs `python -m dkebpf` with its directory first on PYTHONPATH
(empty: the installed package). Needs root, nginx, wrk. Prints per round
the samples (MiB) and per side the median of all samples.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_memory import MB, status
from support.nginx import Nginx

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
SIDES = {"before": os.environ.get("BENCH_BEFORE", ""), "after": os.environ.get("BENCH_AFTER", "")}
INTERVAL_S, BURST_AT_S, BURST_S = 15, 17, 2


def after_burst(tmp, tag, pythonpath, url):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(pythonpath) if pythonpath else "")
    log = os.path.join(tmp, f"{tag}.log")
    p = subprocess.Popen([sys.executable, "-m", "dkebpf", "run", "--interval", f"{INTERVAL_S}s", "--output",
                          os.path.join(tmp, f"{tag}.lp"), "--log", log, "--enabled", "ebpf-net"], cwd=tmp, env=env)
    try:
        while not (os.path.exists(log) and "dkebpf started" in open(log).read()):
            if p.poll() is not None:
                raise SystemExit(f"bench_memory_burst: {tag} did not start: {open(log).read()}")
            time.sleep(0.1)
        t0 = time.monotonic()
        time.sleep(BURST_AT_S)
        subprocess.run(["wrk", "-t1", "-c4", f"-d{BURST_S}s", url], capture_output=True, check=True)
        samples = []
        while time.monotonic() - t0 < 2 * INTERVAL_S - 1:
            time.sleep(1)
            samples.append(status(p.pid)["VmRSS"])
        return samples
    finally:
        p.terminate()
        p.wait(30)


def main():
    res = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        url = f"http://127.0.0.1:{ngx.port}/ok"
        for r in range(ROUNDS):
            for side, path in SIDES.items():
                res[side] += after_burst(tmp, f"{side}{r}", path, url)
                print(f"round {r} {side}: " + " ".join(f"{x / MB:.0f}" for x in res[side][-(2 * INTERVAL_S - 1 - BURST_AT_S - BURST_S):])
                      + f" loadavg={os.getloadavg()[0]:.1f}", flush=True)
    for side, samples in res.items():
        print(f"{side}_after_burst_rss_median_mb: {statistics.median(samples) / MB:.1f}")
        print(f"{side}_after_burst_rss_max_mb: {max(samples) / MB:.1f}")


if __name__ == "__main__":
    main()

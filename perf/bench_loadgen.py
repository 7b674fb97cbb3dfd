"""The built-in load generator of `dkebpf bench` against wrk, in the same
run, both against the same nginx (1 worker) on loopback, alternated so
that both see the same machine: requests/s of our HTTP/1.1 keep-alive
client (32 connections, 2 threads, as wrk -t2 -c32) over wrk's. Goal:
at least 0.8. Also our client against our own server. Needs nginx and wrk.

    python3 perf/bench_loadgen.py        (BENCH_SECONDS=5, BENCH_ROUNDS=3)

Prints `name: value` lines.
"""
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from support.nginx import Nginx  # noqa: E402

from dkebpf.bench.load import LoadServer, drive  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", 5))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
CONNS, THREADS = 32, 2


def wrk(port):
    out = subprocess.run(["wrk", f"-t{THREADS}", f"-c{CONNS}", f"-d{SECONDS:g}s", f"http://127.0.0.1:{port}/ok"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def ours(host, port):
    r = drive("http", host, port, 0, SECONDS, slots=CONNS, threads=THREADS)
    if r.errors:
        raise SystemExit(f"loadgen errors: {r.errors} ({r.first_error})")
    return r.rate


def main():
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        wrk(ngx.port)  # warm-up
        w, g = [], []
        for _ in range(ROUNDS):
            w.append(wrk(ngx.port))
            g.append(ours("127.0.0.1", ngx.port))
        print(f"setup: nginx 1 worker, loopback, -t{THREADS} -c{CONNS}, {ROUNDS} x {SECONDS:g} s alternated")
        ratios = sorted(b / a for a, b in zip(w, g))
        print(f"wrk_requests_per_s: {' '.join(f'{x:.0f}' for x in w)}")
        print(f"loadgen_requests_per_s: {' '.join(f'{x:.0f}' for x in g)}")
        print(f"loadgen_over_wrk: {ratios[len(ratios) // 2]:.3f} (median of the rounds' ratios)")
    with LoadServer() as srv:
        print(f"loadgen_vs_own_server_requests_per_s: {ours(*srv.addr['http']):.0f}")


if __name__ == "__main__":
    main()

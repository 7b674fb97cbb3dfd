"""What ebpf-trace's goroutine probes cost a Go server, and how fast the
goroutine linker is. Needs root, go (Debian's golang-go) and wrk. Run from
the source tree after `make dev` (PYTHONPATH=.) or against an installed
package.

1. probes: the back server of tests/support/go/chain.go (net/http, built
   here) under wrk -t2 -c32 on loopback, alternating rounds without and
   with trace_go.bpf.o's uprobes on its binary (dkebpf/plugins/trace_go.py
   GoTracing, its events taken and folded every 0.5 s by a thread, as the
   collector does); medians of the requests/s and their ratio, the Go
   events per request, the ring's losses.
2. linker: ext/goroutines.pyx GoroutineLinker.link over synthetic request
   starts of 64 threads with 16 goroutine switches per request, against
   ext/trace.pyx link_threads (the thread linking every process gets) on
   the same records, same process; message starts/s and the ratio.

    python3 perf/bench_trace_go.py   (BENCH_SECONDS=8, BENCH_ROUNDS=3, BENCH_CONNS=32)
"""
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from collector import wrk  # noqa: E402
from support.trace_apps import build_go, free_port, stop_process, wait_port  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", 8))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
CONNS = int(os.environ.get("BENCH_CONNS", 32))


def probes_round(exe, probed):
    from dkebpf.plugins.trace_go import GoTracing

    port = free_port()
    srv = subprocess.Popen([exe, "back", str(port)], stdout=subprocess.DEVNULL)
    go = None
    stop = threading.Event()
    try:
        wait_port(port, srv, "go back")
        if probed:
            go = GoTracing(logging.getLogger("bench"))
            go.start()
            go.update([srv.pid])

            def drain():
                while not stop.wait(0.5):
                    go.poll()
                    go.forget(time.monotonic_ns())

            t = threading.Thread(target=drain, daemon=True)
            t.start()
        rps, lat, total = wrk(f"http://127.0.0.1:{port}/back/x", SECONDS, CONNS)
        stats = None
        if go is not None:
            stop.set()
            go.poll()
            c = go.counters()
            stats = (c["ring_go_events_received"] / max(total, 1), c["kernel_drop_trace_go_go_events_ring_full"])
        return rps, lat, stats
    finally:
        stop.set()
        if go is not None:
            go.stop()
        stop_process(srv, 5)


def linker_bench(n=40000, threads=64, switches_per_request=16, rounds=3):
    import numpy as np

    from dkebpf import _goroutines as G
    from dkebpf import _trace

    rng = np.random.default_rng(1)
    pid = 77
    ns = n * switches_per_request
    ev = np.zeros(ns, G.GO_EVENT_DTYPE)
    ev["ts"] = np.sort(rng.integers(0, 10**10, ns)).astype(np.uint64)
    ev["tid"] = rng.integers(1, threads + 1, ns)
    ev["goid"] = rng.integers(1, 5000, ns)
    ev["pid"] = pid
    ev["kind"] = G.EV_SWITCH
    extra = np.zeros(n, G.GO_EVENT_DTYPE)  # a goroutine created per request
    extra["ts"] = np.sort(rng.integers(0, 10**10, n)).astype(np.uint64)
    extra["goid"], extra["arg"] = rng.integers(1, 5000, n), rng.integers(1, 5000, n)
    extra["pid"], extra["kind"] = pid, G.EV_NEWPROC
    msgs = np.zeros(n, _trace.MSG_DTYPE)
    msgs["ts"] = np.sort(rng.integers(0, 10**10, n)).astype(np.uint64)
    msgs["pid"] = pid
    msgs["tid"] = rng.integers(1, threads + 1, n)
    msgs["sk"] = rng.integers(1, 2000, n)
    msgs["op"] = np.where(np.arange(n) % 2 == 0, _trace.OP_RECV, _trace.OP_SEND)
    role = np.full(n, _trace.ROLE_REQUEST, np.uint8)
    idx = np.arange(n)
    t_thr, t_go = [], []
    for _ in range(rounds):
        m = msgs.copy()
        t0 = time.perf_counter()
        _trace.link_threads(m, role, np.zeros(0, _trace.THREAD_DTYPE), 0)
        t1 = time.perf_counter()
        L = G.GoroutineLinker()
        L.add_events(ev)
        L.add_events(extra)
        L.link(m, idx, [pid], 10**10 + 1)
        t2 = time.perf_counter()
        t_thr.append(t1 - t0)
        t_go.append(t2 - t1)
        assert L.stats["no_goroutine"] < n // 10
    return n, ns + n, statistics.median(t_thr), statistics.median(t_go)


def main():
    n, nev, thr, gor = linker_bench()
    print(f"linker: {n} request starts, {nev} Go events, medians of 3; load average {os.getloadavg()[0]:.2f}")
    print(f"link_threads_msgs_per_s: {n / thr:.0f}")
    print(f"goroutines_link_msgs_per_s: {n / gor:.0f} (events folded and applied included: {nev / gor:.0f} events/s)")
    print(f"goroutines_vs_threads_time_ratio: {gor / thr:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(os.path.dirname(HERE), "tests", "support", "go", "chain.go")) as f:
            exe = build_go(f.read(), tmp)
        probes_round(exe, False)  # warm-up
        off, on, per_req, lost = [], [], [], []
        for _ in range(ROUNDS):
            off.append(probes_round(exe, False)[0])
            rps, _, (epr, drop) = probes_round(exe, True)
            on.append(rps)
            per_req.append(epr)
            lost.append(drop)
    print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s against the Go back server, loopback, {ROUNDS} rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"off_requests_per_s: {statistics.median(off):.0f} {[round(x) for x in off]}")
    print(f"probed_requests_per_s: {statistics.median(on):.0f} {[round(x) for x in on]}")
    print(f"probed_vs_off_throughput_ratio: {statistics.median(on) / statistics.median(off):.3f}")
    print(f"go_events_per_request: {statistics.median(per_req):.2f}")
    print(f"go_events_ring_full: {sum(lost)}")


if __name__ == "__main__":
    main()

"""dkebpf linker speed, single core: joining spans (dkebpf.linker.join.link,
in-process and cross-host joins, roots, ids, sampling) on a window of A ->
B -> C chains (5 spans each) with a history of the same size, and the
ingest of posted line protocol (dkebpf.linker.ingest.parse_spans, on
dkebpf._lineproto.read_points) against the pure-Python reading of the same
body (the independent test parser, tests/support/lineproto_parser.py, and
pa.Table.from_pylist: what the linker did before), in the same run.
And the whole linker, `dkebpf linker` as it runs (HTTP on loopback, the
reader, fsynced storage, event-time windows, the join, line protocol out
to a sink that counts): spans posted by 4 collector threads per second,
and until all of them are linked and written.
Targets: the join >= 500k spans/s, the reader >= 1 M spans/s.

The join is timed as the linker runs it per window: link() and the
History.add() of its result (on a copy of the history, outside the timing).
BENCH_LINKER_BASELINE=<git revision>: also the join.py of that revision,
in the same process, rounds alternating (BENCH_LINKER_ROUNDS, default 5),
medians and the ratio printed.

Prints `name: value` lines.
"""
import copy
import importlib.util
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa

from timing import TESTS_DIR, best_of

from dkebpf.linker.ingest import parse_spans
from dkebpf.linker.join import link

N_CHAINS = int(os.environ.get("BENCH_LINKER_CHAINS", 100_000))
N_LINES = int(os.environ.get("BENCH_LINKER_LINES", 200_000))
ROUNDS = int(os.environ.get("BENCH_LINKER_ROUNDS", 5))
# the long-history case: a window of N_CHAINS / 5 chains against a history
# of this many such windows (the linker's defaults, --window 20s and
# --horizon 10m, keep up to 30)
LONG_HISTORY_WINDOWS = int(os.environ.get("BENCH_LINKER_LONG_HISTORY", 10))


def join_module_at(revision):
    """dkebpf/linker/join.py as it was at `revision` (git), loaded beside
    the current one (its relative imports resolve in the installed dkebpf)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    source = subprocess.run(["git", "show", f"{revision}:dkebpf/linker/join.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("dkebpf.linker.join_baseline", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "dkebpf.linker"
    exec(compile(source, f"join.py@{revision}", "exec"), mod.__dict__)
    return mod


def join_seconds(mod, window, older):
    """(wall seconds, CPU seconds of this thread, result) of one window's
    join with `mod` (a join module): link() against a history holding
    `older`, then History.add() of the result."""
    history = mod.History()
    history.add(mod.link(older, mod.History())[2])
    fresh = copy.deepcopy(history)
    t, c = time.perf_counter(), time.thread_time()
    out = mod.link(window, fresh)
    fresh.add(out[2])
    return time.perf_counter() - t, time.thread_time() - c, out


def chains(n, rng):
    """Columns of n A->B->C chains: spans A.in, A.out, B.in, B.out, C.in."""
    i = np.arange(n, dtype=np.int64)
    k = 5 * n
    direction = np.tile(np.array(["incoming", "outgoing", "incoming", "outgoing", "incoming"], object), n)
    ttid = np.repeat(i * 3, 5) + np.tile(np.array([0, 0, 1, 1, 2]), n)
    s1, s2 = rng.integers(0, 2**32, n), rng.integers(0, 2**32, n)
    req = np.stack([rng.integers(0, 2**32, n), s1, s1, s2, s2], 1).ravel()
    resp = req + 1000
    port1, port2 = 10000 + i % 50000, 20000 + i % 40000
    src_ip = np.tile(np.array(["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3"], object), n)
    dst_ip = np.tile(np.array(["192.168.0.9", "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.2"], object), n)
    src_port = np.stack([np.full(n, 80), port1, np.full(n, 8081), port2, np.full(n, 8082)], 1).ravel().astype(str)
    dst_port = np.stack([port1 + 30000, np.full(n, 8081), port1, np.full(n, 8082), port2], 1).ravel().astype(str)
    return pa.table({"span_id": pa.array(rng.integers(1, 2**63, k).astype(np.uint64)),
                     "direction": direction.astype(str), "thread_trace_id": ttid, "req_seq": req, "resp_seq": resp,
                     "src_ip": src_ip.astype(str), "src_port": src_port, "dst_ip": dst_ip.astype(str),
                     "dst_port": dst_port})


class CountingSink:
    """Where the linked spans go in the end-to-end run: counted, not sent."""

    def __init__(self):
        self.points = 0

    def submit(self, category, input_name, body, npoints):
        self.points += npoints

    def close(self, deadline_s):
        pass


def end_to_end(bodies, total, collectors=4):
    """(posting seconds, seconds until every span is written) of `bodies`
    posted by `collectors` threads to a running linker."""
    import http.client
    import tempfile
    import threading

    from dkebpf.linker.server import build

    sink = CountingSink()
    with tempfile.TemporaryDirectory() as tmp:
        linker = build(["--listen", "127.0.0.1:0", "--data-dir", tmp + "/spans", "--window", "1s", "--lateness",
                        "1s"], sink=sink)
        linker.start()
        try:
            def collector(mine):
                conn = http.client.HTTPConnection("127.0.0.1", linker.port, timeout=60)
                for body in mine:
                    conn.request("POST", "/v1/bpftracing", body)
                    answer = conn.getresponse()
                    assert answer.status == 200, answer.read()
                    answer.read()
                conn.close()

            t0 = time.perf_counter()
            threads = [threading.Thread(target=collector, args=(bodies[k::collectors],)) for k in range(collectors)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t_post = time.perf_counter() - t0
            while sink.points < total:  # the windows link once the posts stop for --lateness
                assert time.perf_counter() - t0 < 600, (sink.points, total)
                time.sleep(0.05)
            return t_post, time.perf_counter() - t0
        finally:
            linker.close()


def main():
    rng = np.random.default_rng(7)
    window, older = chains(N_CHAINS, rng), chains(N_CHAINS, rng)
    n = window.num_rows
    current = sys.modules[link.__module__]
    baseline_rev = os.environ.get("BENCH_LINKER_BASELINE")
    modules = {"current": current}
    if baseline_rev:
        modules["baseline"] = join_module_at(baseline_rev)
    times = {name: [] for name in modules}
    cpu = {name: [] for name in modules}
    long_cpu = {name: [] for name in modules}
    short_window = chains(N_CHAINS // 5, rng)
    long_history = chains(N_CHAINS // 5 * LONG_HISTORY_WINDOWS, rng)
    for _ in range(ROUNDS):  # alternating: both see the same load
        for name, mod in modules.items():
            t, c, out = join_seconds(mod, window, older)
            times[name].append(t)
            cpu[name].append(c)
            if name == "current":
                trees = len(set(out[0]["ebpf_trace_id"].to_pylist()))
            long_cpu[name].append(join_seconds(mod, short_window, long_history)[1])
    t_join = statistics.median(times["current"])
    lines = "\n".join(
        f'dketrace,service=b,src_ip=10.0.0.2,src_port=8081,dst_ip=10.0.0.1,dst_port={40000 + j % 20000} '
        f'ebpf_span_type="entry",direction="incoming",thread_trace_id={j}i,req_seq={j * 7}i,resp_seq={j * 7 + 1}i,'
        f'start={1764000000000000 + j}i,duration=100i,pid="42",process_name="python3",'
        f'resource="GET /api/v1/users/{j % 1000}",status_code=200i {1764000000000000000 + j}'
        for j in range(N_LINES)).encode()
    table, rejected, _ = parse_spans(lines, 0)
    assert (table.num_rows, rejected) == (N_LINES, 0)
    t_ingest = best_of(lambda: parse_spans(lines, 0), 5)
    t_ingest_cpu = best_of(lambda: parse_spans(lines, 0), 5, time.thread_time)
    sys.path.insert(0, TESTS_DIR)
    from support.lineproto_parser import parse

    def python_reading(body):
        return pa.Table.from_pylist([{**p.tags, **p.fields, "time": p.timestamp} for p in parse(body)])

    small = lines[:lines.index(b"\n", len(lines) // 20)]
    t_py = best_of(lambda: python_reading(small), 2) * N_LINES / (small.count(b"\n") + 1)
    print(f"linker_window_spans: {n}")
    print(f"linker_history_spans: {older.num_rows}")
    print(f"linker_traces_found: {trees} (expected {N_CHAINS})")
    def rounds(ts):
        return ", ".join(f"{n / t / 1e6:.2f}" for t in ts)

    for name, label in (("current", ""), ("baseline", "_baseline")):
        if name not in modules:
            continue
        at = f"join.py at {baseline_rev}; " if name == "baseline" else ""
        print(f"linker_join{label}_spans_per_s: {n / statistics.median(times[name]):.0f} ({at}median of {ROUNDS}; "
              f"rounds {rounds(times[name])} M)")
        print(f"linker_join{label}_spans_per_cpu_s: {n / statistics.median(cpu[name]):.0f} (CPU time of the "
              f"joining thread; rounds {rounds(cpu[name])} M)")
    for name, label in (("current", ""), ("baseline", "_baseline")):
        if name in modules:
            print(f"linker_join{label}_long_history_spans_per_cpu_s: "
                  f"{short_window.num_rows / statistics.median(long_cpu[name]):.0f} (a window of {short_window.num_rows} spans, "
                  f"history {long_history.num_rows}; rounds "
                  f"{', '.join(f'{short_window.num_rows / t / 1e6:.2f}' for t in long_cpu[name])} M)")
    if baseline_rev:
        print(f"linker_join_long_history_speedup_vs_baseline: "
              f"{statistics.median(long_cpu['baseline']) / statistics.median(long_cpu['current']):.2f} (CPU)")
        print(f"linker_join_speedup_vs_baseline: {statistics.median(times['baseline']) / t_join:.2f} (wall), "
              f"{statistics.median(cpu['baseline']) / statistics.median(cpu['current']):.2f} (CPU)")
    print(f"linker_ingest_lines: {N_LINES} ({len(lines) / N_LINES:.0f} bytes each)")
    print(f"linker_ingest_line_protocol_spans_per_s: {N_LINES / t_ingest:.0f}")
    print(f"linker_ingest_line_protocol_mb_per_s: {len(lines) / t_ingest / 1e6:.0f}")
    print(f"linker_ingest_line_protocol_spans_per_cpu_s: {N_LINES / t_ingest_cpu:.0f} (CPU time of the reading "
          f"thread: what one core does while others share the machine)")
    print(f"linker_ingest_python_spans_per_s: {N_LINES / t_py:.0f}")
    print(f"linker_ingest_speedup_vs_python: {t_py / t_ingest:.1f}")
    per_body = 20_000
    offsets = np.flatnonzero(np.frombuffer(lines, np.uint8) == 10) + 1
    cuts = [0, *offsets[per_body - 1::per_body].tolist()]
    bodies = [lines[a:b] for a, b in zip(cuts, cuts[1:] + [len(lines)]) if b > a]
    t_post, t_done = end_to_end(bodies, N_LINES)
    print(f"linker_end_to_end_spans: {N_LINES} in {len(bodies)} posts by 4 collectors")
    print(f"linker_end_to_end_posted_spans_per_s: {N_LINES / t_post:.0f}")
    print(f"linker_end_to_end_linked_spans_per_s: {N_LINES / t_done:.0f} (with --lateness 1s of waiting)")


if __name__ == "__main__":
    main()

"""ebpf-trace's HTTP/2 stream tracker (dkebpf._h2trace.H2Tracker), single
core: records of unary gRPC calls as bpf/trace.bpf.c sends them at the
client (a call per record: HEADERS + DATA out, HEADERS + DATA + trailers
back; realistic header blocks with the dynamic table in use and a fresh
traceparent per call, bench_trace_decode.grpc_calls), spread over
connections, fed in steps as the span builder does (feed, then spans), each
connection closed after its last call. h2_spans_per_cpu_s: to one tracker
kept across runs, as the collector keeps it (its buffers grown once);
h2_spans_per_cpu_s_new_tracker: to a new tracker per run (its buffers'
growth and first-touched pages, which a collector pays once, included).
Baseline in the same run: the plain-Python reference
(tests/reference/h2trace_ref.py) on a slice of the same records.
Target: >= 1 M spans/s per CPU second.

Run: .venv/bin/python perf/bench_trace_h2.py   (BENCH_H2_CALLS, default 20000)
Prints `name: value` lines.
"""
import os
import time

import numpy as np

from bench_trace_decode import grpc_calls, load_reference
from timing import best_of

from dkebpf import _h2trace, _trace
from dkebpf._http2 import frame as h2_frame

CALLS = int(os.environ.get("BENCH_H2_CALLS", 20_000))
CONNS = 100
STEP = 8192  # records per feed (the span builder's steps are larger)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b"")


def client_records(calls):
    """(MSG_DTYPE records by socket then time, their dicts for the reference)."""
    payloads, which = grpc_calls(load_reference("hpack_ref"), CONNS, calls)
    recs, seq = [], {}
    for k, (p, w) in enumerate(zip(payloads, which.tolist())):
        conn, resp = w // 2, w % 2
        op = 2 if resp else 1
        if k < 2 * CONNS and not resp:
            p = PREFACE + p
        s = seq.get((conn, op), 1000)
        seq[(conn, op)] = s + len(p)
        recs.append(dict(sk=0xFFFF888800000000 + conn * 4096, op=op, ts=1000 + 10 * k, seq=s, bytes=len(p),
                         payload=p[:1024], more=0))
    recs.sort(key=lambda r: (r["sk"], r["ts"]))
    m = np.zeros(len(recs), _trace.MSG_DTYPE)
    for f in ("sk", "op", "ts", "seq", "bytes", "more"):
        m[f] = [r[f] for r in recs]
    m["cap_len"] = [len(r["payload"]) for r in recs]
    for i, r in enumerate(recs):
        m["payload"][i] = r["payload"].ljust(1024, b"\0")
    return m, recs


def with_closes(m):
    """m and, after each connection's last call, its close (so that a
    tracker fed m again starts from no connection)."""
    last = np.flatnonzero(np.r_[m["sk"][1:] != m["sk"][:-1], True])
    closes = m[last].copy()
    closes["op"] = _trace.OP_CLOSE
    closes["ts"] += 1
    closes["bytes"] = closes["cap_len"] = 0
    out = np.insert(m, last + 1, closes)
    return out


def run_c(m, tr=None):
    """Feed m in steps, as the span builder does: to a new tracker (its
    pools and buffers grow and their pages are first touched: what a
    collector pays once), or to `tr`, a tracker kept across runs."""
    tr = _h2trace.H2Tracker() if tr is None else tr
    n = 0
    for a in range(0, len(m), STEP):
        part = m[a:a + STEP]
        role = np.zeros(len(part), np.uint8)
        until = np.zeros(len(part), np.uint64)
        tr.feed(part, np.arange(len(part)), role, until, _trace.ROLE_REQUEST)
        n += len(tr.spans(part))
    return n


def main():
    m, recs = client_records(CALLS)
    m = with_closes(m)
    spans = run_c(m)
    assert spans == CALLS, (spans, CALLS)
    kept = _h2trace.H2Tracker()  # as the collector's: one tracker, connections come and go
    run_c(m, kept)
    t_cpu = best_of(lambda: run_c(m, kept), clock=time.thread_time)
    t_wall = best_of(lambda: run_c(m, kept))
    t_cold = best_of(lambda: run_c(m), clock=time.thread_time)
    assert kept.connections == 0 and kept.open_streams == 0
    ref = load_reference("h2trace_ref")
    few = [r for r in recs if r["sk"] < 0xFFFF888800000000 + 10 * 4096]  # 10 connections' calls
    t_ref = best_of(lambda: ref.Tracker().feed(few), repeat=1, clock=time.thread_time)
    print(f"h2_calls: {CALLS}")
    print(f"h2_spans_per_cpu_s: {spans / t_cpu:.0f}")
    print(f"h2_spans_per_s: {spans / t_wall:.0f}")
    print(f"h2_spans_per_cpu_s_new_tracker: {spans / t_cold:.0f}")
    print(f"h2_python_ref_spans_per_cpu_s: {len(few) / 2 / t_ref:.0f}")
    print(f"h2_speedup_vs_python_ref: {(spans / t_cpu) / (len(few) / 2 / t_ref):.1f}")
    print(f"loadavg: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

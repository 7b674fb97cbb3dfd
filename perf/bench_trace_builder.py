"""ebpf-trace's span builder alone, on synthetic nginx + wrk traffic (both
ends traced: per request 4 message starts, 2 spans): SpanBuilder.step
(join, pair, link), SpanBuilder.table (the dketrace columns) and the line
protocol of the spans, in CPU seconds of this process. Steps of 1750
messages (what the 4 MiB reader gave), of 7000 (the 16 MiB one) and of
13,600 (the span builder's whole 16 MiB stage, less what it carries), in
the same process, BENCH_ROUNDS rounds of 40 steps each; medians.

BENCH_TRACE_BASELINE=<tree>: each round also runs in that tree's installed
builder (<tree>/.venv's python running this script's round, e.g.
/work/main), right after this one's: `new/old` lines give the median over
rounds of this tree's CPU per message over the baseline's, per stage and
in all (the machine's load is then the same for both).

    python3 perf/bench_trace_builder.py   (BENCH_ROUNDS=5)
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa

from dkebpf import _trace
from dkebpf._lineproto import encode_batch
from dkebpf.plugins.trace import SPAN_TAGS, SpanBuilder, _fields

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
STEPS = 40
REQ = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Len"  # what the kernel keeps (32 bytes)


class NoServices:
    def services(self, pids):
        return pa.array([""] * len(pids), pa.string())


def traffic(nreq, t0, nconn=32):
    """4 message starts per request: wrk sends, nginx reads, nginx answers,
    wrk reads; 32 keep-alive connections, each end its own socket."""
    m = np.zeros(nreq * 4, _trace.MSG_DTYPE)
    i = np.arange(nreq)
    k = i // nconn
    for j, (side, op, pl, dt) in enumerate([(0, _trace.OP_SEND, REQ, 0), (1, _trace.OP_RECV, REQ, 100),
                                            (1, _trace.OP_SEND, RESP[:32], 200), (0, _trace.OP_RECV, RESP[:32], 300)]):
        r = m[j::4]
        r["sk"] = (i % nconn) * 2 + side + 1
        r["op"], r["ts"], r["pid"], r["tid"] = op, t0 + i * 1000 + dt, 100 + side, 100 + side
        r["bytes"], r["cap_len"] = len(pl), len(pl)
        r["payload"] = pl.ljust(_trace.PAYLOAD_MAX, b"\0")
        r["family"], r["lport"], r["rport"] = 4, 8080 + side, 40000
        r["sk_sent"] = k * (len(REQ) if side == 0 else 200)
        r["sk_recv"] = k * (200 if side == 0 else len(REQ))
        r["comm"], r["pcomm"] = b"w", b"p"
    return m


def run(step):
    """CPU seconds of step, table and line protocol for STEPS steps; messages."""
    b = SpanBuilder(NoServices())
    batches, now = [], 0
    for _ in range(STEPS):
        msgs = traffic(step // 4, now)
        now = int(msgs["ts"].max()) + 1000
        batches.append((msgs, now))
    cpu = {"step": 0.0, "table": 0.0, "encode": 0.0}
    for msgs, now in batches:
        t0 = time.process_time()
        ms, spans = b.step(msgs, now + 2_000_000_000)
        t1 = time.process_time()
        table = b.table(ms, spans, 0).combine_chunks()
        t2 = time.process_time()
        batch = table.to_batches()[0]
        encode_batch("dketrace", batch, SPAN_TAGS, _fields(batch), {"host": "h"}, 0, "time")
        t3 = time.process_time()
        cpu["step"] += t1 - t0
        cpu["table"] += t2 - t1
        cpu["encode"] += t3 - t2
    return cpu, STEPS * step


SIZES = (1750, 7000, 13600)


def one_round():
    """{step: (messages per CPU second, {stage: CPU seconds})} of one round."""
    out = {}
    for step in SIZES:
        cpu, n = run(step)
        out[step] = (n / sum(cpu.values()), cpu)
    return out


def main():
    if sys.argv[1:] == ["--round"]:  # one round, for another tree's run (BENCH_TRACE_BASELINE)
        print(json.dumps(one_round()))
        return
    baseline = os.environ.get("BENCH_TRACE_BASELINE")
    if baseline:
        python = os.path.join(os.path.abspath(baseline), ".venv", "bin", "python")
        if not os.access(python, os.X_OK):
            raise SystemExit(f"BENCH_TRACE_BASELINE: {python} is missing (make install in that tree)")
    res = {step: [] for step in SIZES}
    base = {step: [] for step in SIZES}
    for r in range(ROUNDS):
        if not baseline:
            for step, row in one_round().items():
                res[step].append(row)
            continue
        # both trees alike: a process of its own per round (this script,
        # its directory first on the path, the venv's dkebpf), in turns
        runs = [(sys.executable, res), (python, base)]
        for exe, into in (runs if r % 2 == 0 else runs[::-1]):
            out = subprocess.run([exe, os.path.abspath(__file__), "--round"], capture_output=True, text=True,
                                 check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout
            for step, row in json.loads(out).items():
                into[int(step)].append(tuple(row))
    print(f"{ROUNDS} rounds of {STEPS} steps; load average {os.getloadavg()[0]:.2f}")
    for step, rows in res.items():
        rate = statistics.median(r for r, _ in rows)
        total = statistics.median(sum(c.values()) for _, c in rows)
        split = {k: round(statistics.median(c[k] for _, c in rows) / total, 2) for k in ("step", "table", "encode")}
        print(f"step_{step}_messages_per_cpu_s: {rate:.0f} {[round(r) for r, _ in rows]} share {split}")
    import dkebpf
    print(f"dkebpf from {os.path.dirname(dkebpf.__file__)}")
    for step in (7000, 13600):
        print(f"step_{step}_vs_1750_ratio: "
              f"{statistics.median(a / b for (a, _), (b, _) in zip(res[step], res[1750])):.2f}")
    if baseline:
        print(f"baseline: {baseline}")
        for step in SIZES:
            rate = statistics.median(r for r, _ in base[step])
            print(f"baseline_step_{step}_messages_per_cpu_s: {rate:.0f} {[round(r) for r, _ in base[step]]}")
            # CPU per message, this tree over the baseline, per stage and in all (same rounds)
            ratios = {k: round(statistics.median(a[1][k] / b[1][k] for a, b in zip(res[step], base[step])), 3)
                      for k in ("step", "table", "encode")}
            total = statistics.median(b[0] / a[0] for a, b in zip(res[step], base[step]))
            print(f"step_{step}_cpu_new/old: {total:.3f} {ratios}")


if __name__ == "__main__":
    main()

"""ebpf-trace's span builder alone, on synthetic nginx + wrk traffic (both
ends traced: per request 4 message starts, 2 spans): SpanBuilder.step
(join, pair, link), SpanBuilder.table (the dketrace columns) and the line
protocol of the spans, in CPU seconds of this process. Steps of 1750
messages (what the 4 MiB reader gave), of 7000 (the 16 MiB one) and of
13,600 (the span builder's whole 16 MiB stage, less what it carries), in
the same process, BENCH_ROUNDS rounds of 40 steps each; medians. Run it
with another tree's venv python for that tree's builder, at the same load.

    python3 perf/bench_trace_builder.py   (BENCH_ROUNDS=5)
"""
import os
import statistics
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


def main():
    res = {1750: [], 7000: [], 13600: []}
    for _ in range(ROUNDS):
        for step in res:
            cpu, n = run(step)
            res[step].append((n / sum(cpu.values()), cpu))
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


if __name__ == "__main__":
    main()

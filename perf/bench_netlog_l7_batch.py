"""bpf_net_l7_log's batch builder (dkebpf.plugins.netlog.l7_batch and the
common tags it shares with bpf_net_l4_log) against the one of an earlier
revision, in the same process: 20k exchanges, the output checked identical.

    PYTHONPATH=. python3 perf/bench_netlog_l7_batch.py [REV]   (REV: 8f51afb, the per-row builder)

Prints each builder's thread CPU time (best of 5) and their ratio."""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

import dkebpf.plugins.netlog as nl  # noqa: E402
from unit.test_netlog_columns import TRACEPARENT, capture, rows_of  # noqa: E402

N = 20000


def builder_of(rev):
    """l7_batch as it was at rev (its common_columns too), on today's module globals."""
    src = subprocess.run(["git", "-C", os.path.join(HERE, os.pardir), "show", f"{rev}:dkebpf/plugins/netlog.py"],
                         capture_output=True, text=True, check=True).stdout
    ns = dict(vars(nl))
    exec(src[src.index("def common_columns"):src.index("NF_DIR_OUTGOING, NF_DIR_INCOMING")], ns)
    return ns["l7_batch"]


def best_cpu(fn, parts):
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time()
        out = fn(parts)
        best = min(best, time.thread_time() - t0)
    return best, out


def main():
    rev = sys.argv[1] if len(sys.argv) > 1 else "8f51afb"
    x = rows_of([{"path": b"/api/v1/items/%d?x=1" % i, "traceparent": TRACEPARENT, "has_traceparent": i % 2,
                  "has_resp": 1, "incoming": i % 2, "method": 1, "status": 200, "counts": [3, 4, 500, 600, 0, 0],
                  "chunks": (1, 2)} for i in range(N)])
    parts = [(capture(), x)]
    t_old, old = best_cpu(builder_of(rev), parts)
    t_new, new = best_cpu(nl.l7_batch, parts)
    assert old.to_pylist() == new.to_pylist(), "outputs differ"
    print(f"l7_batch_{rev}_ms: {t_old * 1e3:.1f}")
    print(f"l7_batch_tree_ms: {t_new * 1e3:.1f}")
    print(f"ratio: {t_old / t_new:.2f} (identical output, {N} exchanges, load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()

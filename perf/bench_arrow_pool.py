"""pyarrow's memory pools on the collector's kind of work (casts, divide,
if_else, dictionary_encode, group_by over 200k rows): the system pool
(glibc malloc, what the agent uses: dkebpf/agent.py use_system_allocator)
against pyarrow's default mimalloc, alternating in one process, 7 rounds,
medians. Also the anonymous memory each pool leaves after its first use,
each in a fresh process. Prints `name: value` lines.

    python3 perf/bench_arrow_pool.py
"""
import statistics
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROWS = 200_000
ROUNDS = 7


def work(pool, rng):
    a = pa.array(rng.integers(0, 1000, ROWS), memory_pool=pool)
    s = pa.array(rng.integers(0, 50, ROWS).astype(str), memory_pool=pool)
    t0 = time.perf_counter()
    for _ in range(5):
        x = pc.cast(pc.divide(pc.cast(a, pa.float64(), memory_pool=pool), 3, memory_pool=pool), pa.int64(),
                    safe=False, memory_pool=pool)
        y = pc.if_else(pc.greater(a, 500, memory_pool=pool), a, x, memory_pool=pool)
        pc.dictionary_encode(s, memory_pool=pool)
        pa.table({"a": a, "y": y, "s": s}).group_by("s").aggregate([("y", "sum")])
    return time.perf_counter() - t0


FIRST_USE = """
import pyarrow as pa, pyarrow.compute as pc, numpy as np
pa.set_memory_pool(pa.{pool}_memory_pool())
pc.add(pa.array(np.arange(1000000)), 1)
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon')))
"""


def anon_after_first_use(pool):
    return int(subprocess.check_output([sys.executable, "-c", FIRST_USE.format(pool=pool)], text=True)) / 1024


def main():
    rng = np.random.default_rng(1)
    pools = {"mimalloc": pa.mimalloc_memory_pool(), "system": pa.system_memory_pool()}
    times = {k: [] for k in pools}
    for _ in range(ROUNDS):
        for name, pool in pools.items():
            pa.set_memory_pool(pool)
            times[name].append(work(pool, rng))
    for name in pools:
        print(f"arrow_pool_{name}_s: {statistics.median(times[name]):.4f}")
        print(f"arrow_pool_{name}_anon_mb: {anon_after_first_use(name):.1f}")
    print(f"arrow_pool_system_vs_mimalloc_time: "
          f"{statistics.median(times['system']) / statistics.median(times['mimalloc']):.2f}")


if __name__ == "__main__":
    main()

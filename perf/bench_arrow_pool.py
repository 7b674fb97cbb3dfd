"""Arrow's memory pools on the collector's kind of work: per pool (system =
glibc malloc, what `dkebpf` sets through ARROW_DEFAULT_MEMORY_POOL;
pyarrow's default mimalloc; jemalloc when this pyarrow has it) the time of
10 group-bys of 200k rows (dkebpf.groupby, the plugins' aggregation: Acero's
aggregate node) plus casts, divide, if_else and dictionary_encode, and the
anonymous memory left after them once freed memory was handed back as the
agent does after each flush (release_unused + malloc_trim; glibc's mmap
threshold fixed as the agent fixes it).

The pool must be chosen by the variable, in a fresh process: Acero
allocates from Arrow's C++ default pool, which pa.set_memory_pool does not
change. ROUNDS rounds, the pools alternating within each (same machine
state); medians, and each pool's time as a ratio of the system pool's.
The system pool also runs with glibc's default (sliding) mmap threshold:
with the agent's fixed one every buffer over 256 KiB is a fresh mapping,
faulted in page by page.

    python3 perf/bench_arrow_pool.py          (BENCH_ROUNDS=7)

Prints `name: value` lines (MB = 2^20 bytes).
"""
import os
import statistics
import subprocess
import sys

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 7))
MB = 1 << 20

ONE_PROCESS = """
import ctypes, time
import numpy as np, pyarrow as pa, pyarrow.compute as pc
from dkebpf.agent import fix_mmap_threshold, release_free_memory
from dkebpf.groupby import group_by

def anon():
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('RssAnon'))

if FIXED_THRESHOLD:  # as the agent runs
    fix_mmap_threshold()
rng = np.random.default_rng(1)
rows = 200_000
a = pa.array(rng.integers(0, 1000, rows))
s = pa.array(rng.integers(0, 5000, rows).astype(str))
before = anon()
t0 = time.perf_counter()
for _ in range(10):
    x = pc.cast(pc.divide(pc.cast(a, pa.float64()), 3), pa.int64(), safe=False)
    y = pc.if_else(pc.greater(a, 500), a, x)
    pc.dictionary_encode(s)
    group_by(pa.table({"a": a, "y": y, "s": s}), ["s"], [("y", "sum"), ("a", "max"), ("a", "count")])
    del x, y
elapsed = time.perf_counter() - t0
peak = anon()
release_free_memory()
print(pa.default_memory_pool().backend_name, elapsed, before, peak, anon())
"""


def one(pool, fixed_threshold):
    """(seconds, anon before, anon right after, anon after release) of the work in a fresh process on `pool`."""
    env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL=pool)
    code = f"FIXED_THRESHOLD = {fixed_threshold}\n{ONE_PROCESS}"
    out = subprocess.check_output([sys.executable, "-c", code], env=env, text=True).split()
    if out[0] != pool:
        raise SystemExit(f"bench_arrow_pool: asked for the {pool} pool, pyarrow used {out[0]}")
    return float(out[1]), *(int(v) for v in out[2:])


def main():
    import pyarrow as pa

    # name: (pool, glibc's mmap threshold fixed as the agent fixes it)
    variants = {"system": ("system", True), "system_glibc_default_threshold": ("system", False)}
    variants.update((p, (p, True)) for p in ("mimalloc", "jemalloc") if p in pa.supported_memory_backends())
    runs = {p: [] for p in variants}
    for _ in range(ROUNDS):
        for p, (pool, fixed) in variants.items():
            runs[p].append(one(pool, fixed))
    print(f"rounds: {ROUNDS}  loadavg: {os.getloadavg()[0]:.1f}")
    system_s = statistics.median(r[0] for r in runs["system"])
    for p in variants:
        med = [statistics.median(r[i] for r in runs[p]) for i in range(4)]
        print(f"arrow_pool_{p}_s: {med[0]:.4f}")
        print(f"arrow_pool_{p}_vs_system_time: {med[0] / system_s:.2f}")
        print(f"arrow_pool_{p}_anon_before_mb: {med[1] / MB:.1f}")
        print(f"arrow_pool_{p}_anon_after_work_mb: {med[2] / MB:.1f}")
        print(f"arrow_pool_{p}_anon_after_release_mb: {med[3] / MB:.1f}")


if __name__ == "__main__":
    main()

"""Timing shared by the benchmarks (run as `python3 perf/bench_*.py`, so
this directory is on sys.path)."""
import time


def best_of(fn, repeat=5):
    """The fastest of `repeat` runs, in seconds: the least disturbed by
    whatever else this noisy machine is doing."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best

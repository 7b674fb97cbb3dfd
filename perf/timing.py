"""Timing shared by the benchmarks (run as `python3 perf/bench_*.py`, so
this directory is on sys.path)."""
import importlib.util
import os
import time

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")


def best_of(fn, repeat=5, clock=time.perf_counter):
    """The fastest of `repeat` runs, in seconds: the least disturbed by
    whatever else this noisy machine is doing. clock=time.thread_time: in
    CPU seconds of the calling thread (what one core does for a one-thread
    kernel while other processes share the machine)."""
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def load_reference(name):
    """tests/reference/<name>.py, the pure-Python reference a bench compares
    with, loaded by path: putting the repository on sys.path would shadow
    the installed dkebpf (whose extensions are built)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(TESTS_DIR, "reference", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

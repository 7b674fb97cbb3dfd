"""What releasing the libraries' pages after a flush costs
(`release_library_pages()` in dkebpf/agent.py): CPU of the release (a
read of /proc/self/maps, of smaps only when it changed, and the
madvise calls) and the faults of the pages the next round of work uses
again. A group-by of 100k rows stands
for a flush; rounds with and without a release after each, alternated.

    python3 perf/bench_memory_release.py        (BENCH_ROUNDS=50)

Prints `name: value` lines.
"""
import os
import resource
import time

import numpy as np
import pyarrow as pa

from dkebpf.agent import release_library_pages
from dkebpf.groupby import group_by

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 50))


def faults():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt + r.ru_majflt


def main():
    t = pa.table({"k": np.arange(100000) % 7, "v": np.arange(100000)})
    group_by(t, ["k"], [("v", "sum")])
    release_library_pages()
    print(f"loadavg: {os.getloadavg()[0]:.1f}")
    for label, release in (("without", False), ("with", True), ("without", False), ("with", True)):
        f0, c0, in_release = faults(), time.process_time(), 0.0
        for _ in range(ROUNDS):
            group_by(t, ["k"], [("v", "sum")])
            if release:
                r0 = time.process_time()
                release_library_pages()
                in_release += time.process_time() - r0
        cpu = time.process_time() - c0
        print(f"{label}_release_cpu_ms_per_round: {cpu / ROUNDS * 1e3:.2f} (release {in_release / ROUNDS * 1e3:.2f})"
              f" faults_per_round: {(faults() - f0) / ROUNDS:.0f}")


if __name__ == "__main__":
    main()

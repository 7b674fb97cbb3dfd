"""ebpf-bash user-space speed, as ratios against baselines measured in the
same run: decoding bash_line records into the cmd column
(dkebpf._bashline.decode_lines) against the pure-Python reference
(tests/reference/bashline_ref.py), and the whole batch build (decode,
user names, message) per line.

Input: 20k records, a mix of short ASCII commands, UTF-8 lines and lines
truncated at the 480-byte capture.

Prints `name: value` lines.
"""
import os

import numpy as np

from timing import best_of, load_reference

from dkebpf._bashline import decode_lines
from dkebpf._records import BASH_CAPTURE_MAX, BASH_LINE_DTYPE, BASH_TRUNCATED
from dkebpf.plugins.bash import UserNames, build_batch

N = int(os.environ.get("BENCH_BASHLINE_N", 20_000))


def make_records(n, rng):
    samples = [b"ls -la /var/log", b"cd /srv/app && git pull --rebase", "echo grüße 世界 🎉".encode(),
               b"kubectl get pods -n kube-system -o wide", ("vim " + "é" * 400).encode(), b"x" * 2000]
    recs = np.zeros(n, BASH_LINE_DTYPE)
    picks = rng.integers(0, len(samples), n)
    for i, k in enumerate(picks):
        line = samples[k]
        cap = line[:BASH_CAPTURE_MAX]
        recs[i]["line"] = cap + b"\0" * (BASH_CAPTURE_MAX + 1 - len(cap))
        recs[i]["captured"] = len(cap)
        recs[i]["line_len"] = len(line)
        recs[i]["flags"] = BASH_TRUNCATED if len(line) > BASH_CAPTURE_MAX else 0
    recs["pid"] = rng.integers(1000, 1100, n)
    recs["uid"] = rng.choice([0, 65534, 1000], n)
    recs["ts"] = np.arange(n, dtype=np.uint64) * 1000 + 10**9
    return recs


def main():
    ref = load_reference("bashline_ref")
    recs = make_records(N, np.random.default_rng(1))
    t_cy = best_of(lambda: decode_lines(recs), 9)
    t_py = best_of(lambda: ref.decode_lines(recs), 3)
    names = UserNames()
    t_batch = best_of(lambda: build_batch(recs, names, 0, 0), 9)
    print(f"bashline_records: {N}")
    print(f"bashline_decode_seconds: {t_cy:.6f}")
    print(f"bashline_decode_lines_per_s: {N / t_cy:.0f}")
    print(f"python_ref_decode_seconds: {t_py:.6f}")
    print(f"bashline_decode_speedup_vs_python_ref: {t_py / t_cy:.1f}")
    print(f"bash_build_batch_seconds: {t_batch:.6f}")
    print(f"bash_build_batch_lines_per_s: {N / t_batch:.0f}")


if __name__ == "__main__":
    main()

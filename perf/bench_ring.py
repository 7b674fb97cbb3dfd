"""Ring-buffer decode rate: records drained from a real BPF ring buffer
into a numpy structured array by dkebpf's RingReader, against
  - a plain numpy copy of the same bytes (the memcpy limit), and
  - a pure-Python consumer (struct.unpack per record) of the same bytes.
The ring is filled first by a BPF producer (perf/ringbench.bpf.c), then the
consumer alone is timed. Needs root. Prints `name: value` lines.

    python3 perf/bench_ring.py
"""
import os
import struct
import sys
import tempfile
import time

import numpy as np

from collector import build_bpf
from timing import best_of





def main():
    from dkebpf import _records, kernel
    from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec, Ring
    kernel.ensure_mounts()
    n_target = 400_000
    # a reader budget for all of them: take() drains the ring in one call
    ring = Ring("ring", _records.EVENT_DTYPE, buffer_bytes=n_target * _records.EVENT_DTYPE.itemsize)
    producer = ObjectSpec("ringbench", knobs=("target_tgid", "per_call"), rings=(ring,))
    with tempfile.TemporaryDirectory() as tmp:
        bpf = BpfSkeleton(producer, path=build_bpf("ringbench", tmp)).start(
            knobs={"target_tgid": os.getpid(), "per_call": 64})
        reader = bpf.rings.ring
        times = []
        for _ in range(5):
            for _ in range(n_target // 64):
                os.getppid()
            t = time.perf_counter()
            recs = reader.take()
            times.append(time.perf_counter() - t)
        bpf.close()
        n = len(recs)
        assert n == n_target, (n, reader.counters())
        assert int(recs["stats"]["bytes_sent"][5]) == 15
        ring_s = min(times)
        raw = recs.tobytes()
        nbytes = len(raw)
        src = np.frombuffer(raw, dtype=np.uint8)
        dst = np.empty_like(src)
        copy_s = best_of(lambda: np.copyto(dst, src))
        fresh_copy_s = best_of(lambda: src.copy())
        fmt = struct.Struct("<Q16sHxxxxxxQQQQ16sIIIIHBBBBxx16s")
        assert fmt.size == _records.EVENT_DTYPE.itemsize
        py_n = min(n, 100_000)
        py_raw = raw[: py_n * fmt.size]
        py_s = best_of(lambda: [fmt.unpack_from(py_raw, i * fmt.size) for i in range(py_n)], 3) * (n / py_n)
    print(f"ring_records: {n}")
    print(f"ring_record_bytes: {_records.EVENT_DTYPE.itemsize}")
    print(f"ring_decode_records_per_s: {n / ring_s:.0f}")
    print(f"numpy_copy_records_per_s: {n / copy_s:.0f}")
    print(f"numpy_fresh_copy_records_per_s: {n / fresh_copy_s:.0f}")
    print(f"python_unpack_records_per_s: {n / py_s:.0f}")
    print(f"ring_decode_vs_copy_slowdown: {ring_s / copy_s:.2f}")
    print(f"ring_decode_vs_fresh_copy_slowdown: {ring_s / fresh_copy_s:.2f}")
    print(f"ring_decode_speedup_vs_python: {py_s / ring_s:.1f}")


if __name__ == "__main__":
    sys.exit(main())

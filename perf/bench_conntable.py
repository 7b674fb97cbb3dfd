"""Connection-table merge speed, as ratios against baselines measured in the
same run: the pure-Python reference (tests/reference/conntable_ref.py) and a
plain numpy copy of the same input bytes (the memcpy limit).

The snapshot pair: 200k flow instances (10% of them unconnected-UDP flows
sharing 2k sockets), the previous snapshot as merge() returned it, the
current dump in hash (random) order with half of the instances changed, 5%
closed (half of those still partially in the dump: closed between dump and
drain).

Prints `name: value` lines.
"""
import os
import time

import numpy as np

from timing import best_of, load_reference

from dkebpf._conntable import delta_to_arrow, merge
from dkebpf._records import EVENT_DTYPE, F_CLOSED, F_ESTABLISHED, KEY_DTYPE, STATS_DTYPE

N = int(os.environ.get("BENCH_CONNTABLE_N", 200_000))


def rawtake(arr, idx):
    """Rows with their padding bytes (as a map dump delivers them)."""
    return arr.view(np.dtype((np.void, arr.dtype.itemsize)))[idx].view(arr.dtype)


def make_pair(n, rng):
    n_udp = n // 10
    n_tcp = n - n_udp
    keys = np.zeros(n, KEY_DTYPE)
    stats = np.zeros(n, STATS_DTYPE)
    # kernel slab pointers: shared top bytes, 0x900-byte objects (tcp_sock)
    tcp_sk = 0xFFFF888100000000 + rng.choice(1 << 28, n_tcp, replace=False).astype(np.uint64) * 0x900
    udp_sk = 0xFFFF888200000000 + rng.choice(1 << 20, 2000, replace=False).astype(np.uint64) * 0x400
    keys["sk"][:n_tcp] = tcp_sk
    keys["sk"][n_tcp:] = udp_sk[np.arange(n_udp) % 2000]
    raddr = np.zeros((n, 16), np.uint8)
    raddr[:, :4] = rng.integers(0, 256, (n, 4))
    keys["raddr"] = raddr.view("V16").ravel()
    keys["rport"][:n_tcp] = rng.integers(1, 65536, n_tcp)
    keys["rport"][n_tcp:] = np.arange(n_udp) // 2000 + 1  # distinct peers per UDP socket
    stats["ts_first"] = rng.integers(1, 10**12, n)
    stats["ts_last"] = stats["ts_first"] + rng.integers(0, 10**9, n)
    stats["bytes_sent"] = rng.integers(0, 10**9, n)
    stats["bytes_recv"] = rng.integers(0, 10**9, n)
    stats["retransmits"] = rng.integers(0, 10, n)
    stats["pid"] = rng.integers(1, 1 << 22, n)
    stats["lport"] = rng.integers(1, 65536, n)
    stats["family"] = 4
    stats["proto"][:n_tcp] = 6
    stats["proto"][n_tcp:] = 17
    stats["flags"][:n_tcp] = F_ESTABLISHED
    stats["comm"] = np.array([b"nginx", b"curl", b"python3", b"postgres"])[rng.integers(0, 4, n)]

    empty_k, empty_s = np.zeros(0, KEY_DTYPE), np.zeros(0, STATS_DTYPE)
    _, prev_k, prev_s, _ = merge(empty_k, empty_s, keys, stats, np.zeros(0, EVENT_DTYPE), 0)

    # this interval's dump, hash order
    perm = rng.permutation(n)
    cur_k, cur_s = rawtake(prev_k, perm), rawtake(prev_s, perm)
    changed = rng.random(n) < 0.5
    cur_s["bytes_sent"][changed] += rng.integers(1, 10**6, changed.sum()).astype(np.uint64)
    cur_s["ts_last"][changed] += 10**10
    closing = rng.random(n) < 0.05
    ev = np.zeros(closing.sum(), EVENT_DTYPE)
    ev["key"], ev["stats"] = cur_k[closing], cur_s[closing]
    ev["stats"]["bytes_recv"] += 100
    ev["stats"]["flags"] |= F_CLOSED
    keep = ~closing | (rng.random(n) < 0.5)  # half of the closed still in the dump
    cur_k, cur_s = rawtake(cur_k, np.flatnonzero(keep)), rawtake(cur_s, np.flatnonzero(keep))
    return prev_k, prev_s, cur_k, cur_s, ev




def main():
    rng = np.random.default_rng(1)
    prev_k, prev_s, cur_k, cur_s, closed = make_pair(N, rng)
    idle_before = 0
    args = (prev_k, prev_s, cur_k, cur_s, closed, idle_before)

    out = merge(*args)
    t_cy = best_of(lambda: merge(*args), 9)

    ref = load_reference("conntable_ref")
    t0 = time.perf_counter()
    exp = ref.merge(*args)
    t_py = time.perf_counter() - t0
    if len(exp[0]) != len(out[0]) or len(exp[1]) != len(out[1]):
        raise SystemExit("bench_conntable: Cython and reference merges disagree")

    src = np.concatenate([a.view(np.uint8).ravel() for a in
                          (np.ascontiguousarray(x) for x in (prev_k, prev_s, cur_k, cur_s, closed))])
    dst = np.empty_like(src)
    t_copy = best_of(lambda: np.copyto(dst, src), 21)

    delta = out[0]
    t_arrow = best_of(lambda: delta_to_arrow(delta), 9)

    print(f"conntable_instances: {N}")
    print(f"conntable_delta_rows: {len(delta)}")
    print(f"conntable_input_bytes: {src.nbytes}")
    print(f"conntable_merge_seconds: {t_cy:.6f}")
    print(f"conntable_merge_instances_per_s: {N / t_cy:.0f}")
    print(f"python_ref_merge_seconds: {t_py:.6f}")
    print(f"python_ref_merge_instances_per_s: {N / t_py:.0f}")
    print(f"conntable_speedup_vs_python: {t_py / t_cy:.1f}")
    print(f"memcpy_seconds: {t_copy:.6f}")
    print(f"conntable_vs_memcpy: {t_cy / t_copy:.1f}")
    print(f"delta_to_arrow_rows_per_s: {len(delta) / t_arrow:.0f}")


if __name__ == "__main__":
    main()

"""Conntrack netlink parsing and the NAT table, as ratios against baselines
measured in the same run: the pure-Python reference parser
(tests/reference/nfct_ref.py) and a plain numpy copy of the same bytes (the
memcpy limit).

Input: N kernel-shaped ctnetlink messages (tests/support/ctnetlink.py
builds them as net/netfilter/nf_conntrack_netlink.c lays them out: both
tuples, status, id, plus the attributes the parser skips that the kernel
also sends: timeout, mark, protoinfo, use), 70% IPv4, a mix of NEW, UPDATE
and DESTROY, 20% of them DNATed. Then the table: those events applied, and
N lookups of which 20% hit.

Prints `name: value` lines.
"""
import os
import struct
import sys
import time

import numpy as np

from timing import best_of, load_reference

from dkebpf._nfct import EVENT_DTYPE, parse
from dkebpf.enrich.nat import NatTable

N = int(os.environ.get("BENCH_NFCT_N", 100_000))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # support/ctnetlink.py (message builder)
from support import ctnetlink as ctn  # noqa: E402


def make_messages(n, rng):
    # what the kernel adds after the tuples (ctnetlink_fill_info): timeout,
    # mark, protoinfo (nested tcp state), use count
    extra = (ctn.nla(7, struct.pack("!I", 120)) + ctn.nla(8, struct.pack("!I", 0))
             + ctn.nest(4, ctn.nest(1, ctn.nla(1, b"\x03"), ctn.nla(4, b"\x00\x00")))
             + ctn.nla(6, struct.pack("!I", 1)))
    kinds = rng.choice(["new", "update", "destroy"], n, p=[0.3, 0.4, 0.3])
    fams = np.where(rng.random(n) < 0.7, 4, 6)
    dnat = rng.random(n) < 0.2
    msgs = []
    for i in range(n):
        fam = int(fams[i])
        alen = 4 if fam == 4 else 16
        src, dst, pod = (rng.bytes(alen) for _ in range(3))
        sport, dport = int(rng.integers(1024, 65536)), int(rng.integers(1, 1024))
        rsrc, rport = (pod, 8080) if dnat[i] else (dst, dport)
        msgs.append(ctn.ct_message(str(kinds[i]), fam, (src, dst, 6, sport, dport),
                                   (rsrc, src, 6, rport, sport), status=0x18e, ct_id=i, extra=extra))
    return msgs


def main():
    rng = np.random.default_rng(3)
    msgs = make_messages(N, rng)
    buf = b"".join(msgs)

    rows, st = parse(buf)
    if st["events"] != N or st["malformed"]:
        raise SystemExit(f"bench_nfct: parse gave {st}")
    t_cy = best_of(lambda: parse(buf), 7)

    ref = load_reference("nfct_ref")
    t0 = time.perf_counter()
    exp, st_ref = ref.parse(buf)
    t_py = time.perf_counter() - t0
    if st_ref != st:
        raise SystemExit("bench_nfct: Cython and reference parsers disagree")

    src = np.frombuffer(buf, np.uint8)
    dst = np.empty_like(src)
    t_copy = best_of(lambda: np.copyto(dst, src), 21)

    # the table: all events applied in one step, then N lookups
    def apply_all():
        t = NatTable(max_entries=N)
        t.add(rows)
        t.apply(1)
        return t
    table = apply_all()
    t_apply = best_of(apply_all, 5)
    q = rows[rng.permutation(N)]
    args = (q["family"], q["proto"], q["orig_src"], q["orig_sport"], q["orig_dst"], q["orig_dport"])
    ip, _port = table.lookup(*args)
    t_lookup = best_of(lambda: table.lookup(*args), 5)

    print(f"nfct_messages: {N}")
    print(f"nfct_bytes: {len(buf)}")
    print(f"nfct_parse_seconds: {t_cy:.6f}")
    print(f"nfct_parse_events_per_s: {N / t_cy:.0f}")
    print(f"python_ref_parse_seconds: {t_py:.6f}")
    print(f"python_ref_parse_events_per_s: {N / t_py:.0f}")
    print(f"nfct_parse_speedup_vs_python: {t_py / t_cy:.1f}")
    print(f"memcpy_seconds: {t_copy:.6f}")
    print(f"nfct_parse_vs_memcpy: {t_cy / t_copy:.1f}")
    print(f"nat_table_entries: {len(table)}")
    print(f"nat_apply_events_per_s: {N / t_apply:.0f}")
    print(f"nat_lookup_rows_per_s: {N / t_lookup:.0f}")
    print(f"nat_lookup_hits: {N - ip.null_count}")
    print(f"nfct_event_row_bytes: {EVENT_DTYPE.itemsize}")


if __name__ == "__main__":
    main()

"""Line-protocol encoding rate: dkebpf._lineproto.encode_batch against the
pure-Python reference (tests/reference/lineproto_ref.py) on the same
100k-row netflow-like batch (15 string tags, 7 int fields, host/service
global tags), plus a plain copy of the output bytes (the memcpy limit).
Both encoders must produce identical bodies. And the reading back of that
body: dkebpf._lineproto.read_points against the independent Python parser
(tests/support/lineproto_parser.py), which must agree on every value.
Prints `name: value` lines.

    python3 perf/bench_lineproto.py [rows]
"""
import os
import sys

import numpy as np

from timing import best_of
import pyarrow as pa

# tests/ for the reference encoder; never the repository root, whose
# dkebpf/ has no compiled extension (the installed package is measured)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from dkebpf._lineproto import encode_batch, read_points  # noqa: E402
from reference import lineproto_ref  # noqa: E402
from support.lineproto_parser import parse  # noqa: E402

TAGS = ["src_ip", "dst_ip", "src_port", "dst_port", "direction", "family", "transport",
        "process_name", "pid", "src_ip_type", "dst_ip_type", "source", "sub_source",
        "dst_domain", "dst_k8s_namespace"]
FIELDS = ["bytes_read", "bytes_written", "retransmits", "rtt", "rtt_var", "tcp_closed",
          "tcp_established"]


def netflow_batch(n, seed=7):
    rng = np.random.default_rng(seed)

    def ips(prefix, k):
        return np.array([f"{prefix}.{a}.{b}" for a, b in
                         rng.integers(0, 256, size=(k, 2))], dtype=object)

    def pick(choices):
        return pa.array(np.asarray(choices, dtype=object)[rng.integers(0, len(choices), n)],
                        pa.string())

    cols = {
        "src_ip": pa.array(ips("10.1", n), pa.string()),
        "dst_ip": pa.array(ips("192.168", n), pa.string()),
        "src_port": pick(["*"] + [str(p) for p in (80, 443, 8080, 9529)]),
        "dst_port": pick([str(p) for p in (53, 80, 443, 3306, 6379, 5432)]),
        "direction": pick(["incoming", "outgoing"]),
        "family": pick(["IPv4", "IPv6"]),
        "transport": pick(["tcp", "udp"]),
        "process_name": pick(["nginx", "curl", "python3", "java", "datakit", "kube proxy"]),
        "pid": pa.array([str(p) for p in rng.integers(1, 4_000_000, n)], pa.string()),
        "src_ip_type": pick(["private", "loopback", "other"]),
        "dst_ip_type": pick(["private", "loopback", "multicast", "other"]),
        "source": pick(["netflow"]),
        "sub_source": pick(["N/A", "K8s"]),
        "dst_domain": pick(["", "example.com", "api.internal.svc", "db-0.db.default.svc"]),
        "dst_k8s_namespace": pick(["N/A", "default", "kube-system"]),
    }
    for name in FIELDS:
        cols[name] = pa.array(rng.integers(0, 10_000_000, n), pa.int64())
    return pa.record_batch(cols)




def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    batch = netflow_batch(n)
    args = ("netflow", batch, TAGS, FIELDS, {"host": "node-1", "service": "ebpf"},
            1_700_000_000_000_000_000)
    body, skipped = encode_batch(*args)
    assert (body, skipped) == lineproto_ref.encode_batch(*args), "encoders disagree"

    t_c = best_of(lambda: encode_batch(*args), 10)
    t_py = best_of(lambda: lineproto_ref.encode_batch(*args), 2)
    src = np.frombuffer(body, dtype=np.uint8)
    dst = np.empty_like(src)
    t_copy = best_of(lambda: np.copyto(dst, src), 20)

    table, rejected, _ = read_points(body)
    small = body[:body.index(b"\n", len(body) // 20) + 1]
    points = parse(small)
    rows = [{k: v for k, v in row.items() if v is not None} for row in table.slice(0, len(points)).to_pylist()]
    assert rejected == 0 and rows == [{**p.tags, **p.fields, "time": p.timestamp} for p in points], "readers disagree"
    t_read = best_of(lambda: read_points(body), 10)
    t_read_py = best_of(lambda: parse(small), 2) * n / len(points)

    mb = len(body) / 1e6
    print(f"lineproto_rows: {n}")
    print(f"lineproto_body_bytes_per_row: {len(body) / n:.1f}")
    print(f"lineproto_cython_rows_per_s: {n / t_c:.0f}")
    print(f"lineproto_python_rows_per_s: {n / t_py:.0f}")
    print(f"lineproto_cython_mb_per_s: {mb / t_c:.1f}")
    print(f"memcpy_mb_per_s: {mb / t_copy:.1f}")
    print(f"lineproto_fraction_of_memcpy: {t_copy / t_c:.4f}")
    print(f"lineproto_speedup_vs_python: {t_py / t_c:.1f}")
    print(f"lineproto_read_rows_per_s: {n / t_read:.0f}")
    print(f"lineproto_read_mb_per_s: {mb / t_read:.1f}")
    print(f"lineproto_read_python_rows_per_s: {n / t_read_py:.0f}")
    print(f"lineproto_read_speedup_vs_python: {t_read_py / t_read:.1f}")


if __name__ == "__main__":
    main()

"""ebpf-trace span decode speed, per protocol, single core: the Cython
parsers (dkebpf._redis, _mysql, _pgsql, _http2, _hpack, _tracectx,
_sqlnorm) against their
pure-Python references in tests/reference/, on realistic captured payloads
(one request or response per payload, as one read/write call carries).
Target: >= 1 M spans/s per core for each parser (a span is a request
payload plus a response payload; figures are per payload).

Prints `name: value` lines.
"""
import importlib.util
import os
import struct
import sys
import time

import numpy as np
import pyarrow as pa

from timing import best_of

from dkebpf import _http2, _mysql, _pgsql, _redis, _sqlnorm, _tracectx
from dkebpf._hpack import HpackDecoder, decode_headers
from dkebpf._http2 import frame as h2_frame

N = int(os.environ.get("BENCH_TRACE_N", 100_000))
HERE = os.path.dirname(os.path.abspath(__file__))


def load_reference(name):
    # tests/reference as the package `reference` (its modules import each
    # other), by path: the repository on sys.path would shadow an installed dkebpf
    if "reference" not in sys.modules:
        folder = os.path.join(HERE, "..", "tests", "reference")
        spec = importlib.util.spec_from_file_location("reference", os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        sys.modules["reference"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["reference"])
    return importlib.import_module(f"reference.{name}")


def mysql_packet(seq, body):
    return struct.pack("<I", len(body))[:3] + bytes([seq]) + body


def pg_msg(t, body):
    return t + struct.pack(">I", len(body) + 4) + body


# a gRPC call after the first on its connection: header blocks use the dynamic table
H2_REQUEST = (h2_frame(1, 0x4, 3, bytes.fromhex("8386be") + b"\x04\x0c/pkg.Svc/Get")
              + h2_frame(0, 0x1, 3, b"\0\0\0\0\x05hello"))
H2_RESPONSE = h2_frame(1, 0x4, 3, b"\x88") + h2_frame(0, 0, 3, b"\0\0\0\0\x02ok") + h2_frame(
    1, 0x5, 3, b"\x00\x0bgrpc-status\x010")


class MiniEncoder:
    """An HPACK encoder as gRPC peers behave: a header met before is indexed
    (dynamic table, no eviction at these sizes), a new one is a literal
    with incremental indexing unless `fresh` (a value new on every call, as
    traceparent: literal without indexing); Huffman strings."""

    def __init__(self, ref):
        self.ref, self.table = ref, []

    def block(self, headers, fresh=()):
        out = b""
        for name, value in headers:
            if (name, value) in self.ref.STATIC:
                out += self.ref.encode_int(self.ref.STATIC.index((name, value)), 7, 0x80)
            elif (name, value) in self.table:
                out += self.ref.encode_int(62 + self.table.index((name, value)), 7, 0x80)
            else:
                incremental = name not in fresh
                out += self.ref.encode_int(0, 6 if incremental else 4, 0x40 if incremental else 0)
                out += self.ref.encode_str(name, True) + self.ref.encode_str(value, True)
                if incremental:
                    self.table.insert(0, (name, value))
        return out


def grpc_calls(ref, conns, calls):
    """Payloads of `calls` unary gRPC calls spread over `conns` connections
    (request: HEADERS + DATA; response: HEADERS + DATA + trailers), and per
    payload the index of its connection and direction's decoder."""
    enc = [(MiniEncoder(ref), MiniEncoder(ref)) for _ in range(conns)]
    payloads, which = [], []
    for k in range(calls):
        c, stream = k % conns, 2 * (k // conns) + 1
        client, server = enc[c]
        req = client.block([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/helloworld.Greeter/SayHello"),
                            (b":authority", b"greeter.default.svc:50051"), (b"te", b"trailers"),
                            (b"content-type", b"application/grpc"),
                            (b"user-agent", b"grpc-python/1.60.0 grpc-c/37.0.0 (linux; chttp2)"),
                            (b"grpc-accept-encoding", b"identity,deflate,gzip"), (b"grpc-timeout", b"4999m"),
                            (b"traceparent", b"00-%032x-%016x-01" % (k + 1, k + 7))],
                           fresh=(b"traceparent", b"grpc-timeout"))
        resp = server.block([(b":status", b"200"), (b"content-type", b"application/grpc"),
                             (b"grpc-accept-encoding", b"identity,deflate,gzip")])
        trailers = server.block([(b"grpc-status", b"0")])
        payloads.append(h2_frame(1, 0x4, stream, req) + h2_frame(0, 0x1, stream, b"\0\0\0\0\x07\n\x05world"))
        payloads.append(h2_frame(1, 0x4, stream, resp) + h2_frame(0, 0, stream, b"\0\0\0\0\x0d\n\x0bHello world")
                        + h2_frame(1, 0x5, stream, trailers))
        which += [2 * c, 2 * c + 1]
    return payloads, np.array(which, np.int32)


def workloads(n):
    half = n // 2
    redis_req = b"*3\r\n$3\r\nSET\r\n$12\r\nsession:1234\r\n$20\r\n" + b"v" * 20 + b"\r\n"
    redis_resp = b"+OK\r\n"
    sql = b"SELECT id, name, email FROM users WHERE id = 42 AND status = 'active' LIMIT 10"
    my_req = mysql_packet(0, b"\x03" + sql)
    my_resp = mysql_packet(1, b"\x00\x01\x00\x02\x00\x00\x00")
    pg_req = pg_msg(b"Q", sql + b"\0")
    pg_resp = pg_msg(b"T", b"\0\1id\0" + bytes(18)) + pg_msg(b"D", b"\0\1\0\0\0\00242") + pg_msg(
        b"C", b"SELECT 1\0") + pg_msg(b"Z", b"I")
    http_req = (b"GET /api/v1/users/42 HTTP/1.1\r\nHost: svc-b:8080\r\nUser-Agent: python-requests/2.31\r\n"
                b"Accept: */*\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
    flags = np.tile(np.array([1, 0], np.uint8), half)
    return {
        "redis": ([redis_req, redis_resp] * half, flags),
        "mysql": ([my_req, my_resp] * half, flags),
        "pgsql": ([pg_req, pg_resp] * half, flags),
        "tracectx": ([http_req] * n, None),
        "http2": ([H2_REQUEST, H2_RESPONSE] * half, None),
        "sqlnorm": ([sql] * n, None),
    }


def main():
    refs = {m: load_reference(f"{m}_ref") for m in ("redis", "mysql", "pgsql", "tracectx", "sqlnorm")}
    refs["http2"] = load_reference("http2_ref")
    refs["hpack"] = load_reference("hpack_ref")
    cy = {"redis": _redis.parse, "mysql": _mysql.parse, "pgsql": _pgsql.parse}
    for name, (payloads, flags) in workloads(N).items():
        arr = pa.array(payloads, pa.binary())
        small = payloads[:N // 20]
        if name in cy:
            t_cy = best_of(lambda: cy[name](arr, flags), 5)
            t_py = best_of(lambda: refs[name].parse(small, flags[:len(small)].tolist()), 2) * 20
        elif name == "http2":
            t_cy = best_of(lambda: _http2.parse(arr), 5)
            t_py = best_of(lambda: refs[name].parse(small), 2) * 20
        elif name == "tracectx":
            t_cy = best_of(lambda: _tracectx.extract(arr), 5)
            t_py = best_of(lambda: refs[name].extract(small), 2) * 20
        else:
            rows = np.arange(N, dtype=np.uint32)
            zeros, lens = np.zeros(N, np.uint32), np.full(N, len(payloads[0]), np.uint32)
            t_cy = best_of(lambda: _sqlnorm.normalize(arr, rows, zeros, lens), 5)
            t_py = best_of(lambda: refs[name].normalize(small, range(len(small)), [0] * len(small),
                                                        [len(payloads[0])] * len(small)), 2) * 20
        print(f"{name}_payloads_per_s: {N / t_cy:.0f}")
        print(f"{name}_python_ref_payloads_per_s: {N / t_py:.0f}")
        print(f"{name}_speedup_vs_python_ref: {t_py / t_cy:.1f}")
    # HPACK: gRPC calls over 100 connections, every header block on its
    # connection's tables; the span fields out (decode_headers) against the
    # Python reference's decode + the same fields
    ref = refs["hpack"]
    calls = N // 2
    payloads, which = grpc_calls(ref, 100, calls)
    arr = pa.array(payloads, pa.binary())
    rows = _http2.parse(arr)
    row_which = which[rows["ev"]]
    blocks = int(np.isin(rows["type"], (1, 9)).sum())

    def cython():
        decoders = [HpackDecoder() for _ in range(2 * 100)]
        return decode_headers(arr, rows, row_which, decoders)

    def cython_with_frames():
        frames = _http2.parse(arr)
        decoders = [HpackDecoder() for _ in range(2 * 100)]
        return decode_headers(arr, frames, which[frames["ev"]], decoders)

    small = calls // 20  # the first calls: their blocks, in order, on fresh decoders
    py_blocks = [(which[r["ev"]], payloads[r["ev"]][r["block_off"]:r["block_off"] + r["block_len"]])
                 for r in rows[rows["ev"] < 2 * small] if r["type"] in (1, 9)]

    def python():
        decoders = [ref.Decoder() for _ in range(2 * 100)]
        return [ref.span_fields(decoders[w].decode(b)) for w, b in py_blocks]

    recs, _ = cython()
    assert (recs["state"] == 1).sum() == blocks and recs["source"][recs["state"] == 1].tolist().count(1) == calls
    t_cy = best_of(cython, 5)
    t_cy_cpu = best_of(cython, 5, time.thread_time)
    t_frames = best_of(cython_with_frames, 5)
    t_py = best_of(python, 2) * blocks / len(py_blocks)
    print(f"hpack_blocks: {blocks}")
    print(f"hpack_blocks_per_s: {blocks / t_cy:.0f}")
    print(f"hpack_blocks_per_cpu_s: {blocks / t_cy_cpu:.0f}")
    print(f"hpack_with_frame_parse_blocks_per_s: {blocks / t_frames:.0f}")
    print(f"hpack_python_ref_blocks_per_s: {blocks / t_py:.0f}")
    print(f"hpack_speedup_vs_python_ref: {t_py / t_cy:.1f}")


if __name__ == "__main__":
    main()

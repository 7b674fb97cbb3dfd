"""HTTP/1.x first-line parsing speed: dkebpf._http against httptools
(llhttp, the parser uvloop and uvicorn use) on the same inputs, as ratios
measured in the same run.

Inputs: N captured payload prefixes (at most 512 bytes, as the kernel hands
them over), half requests (GET/POST, paths of 5..300 bytes with and without
a query string, a few headers), half responses (200/404/500 with headers).

Both sides produce method, path without the query, version and status for
every payload:
  httptools   per payload: a parser object, feed_data, the url callback,
              parse_url for the path (what a Python user of httptools does)
  first_lines dkebpf._http.first_lines over a (N, 512) byte array
  exchanges   HttpPipeline.partial over http_exchange records (what the
              plugin runs per record the kernel paired: request line parsed,
              summed per connection and request key in one Cython pass),
              against the same records through exchange_columns + a pyarrow
              group_by (the way before it)

Prints `name: value` lines.
"""
import os

import httptools
import numpy as np
import pyarrow as pa

from timing import best_of

from dkebpf import _http, _records
from dkebpf.plugins.httpflow import HttpPipeline

N = int(os.environ.get("BENCH_HTTP_N", 100_000))


def make_payloads(n, rng):
    out = []
    for i in range(n):
        if i % 2 == 0:
            method = "GET" if rng.random() < 0.8 else "POST"
            path = "/" + "/".join("seg%d" % rng.integers(1000) for _ in range(rng.integers(1, 30)))
            if rng.random() < 0.5:
                path += "?q=%d&page=%d" % (rng.integers(10**6), rng.integers(100))
            body = b"x" * 20 if method == "POST" else b""
            msg = (f"{method} {path} HTTP/1.1\r\nHost: svc.local:8080\r\nUser-Agent: bench/1.0\r\n"
                   f"Accept: */*\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        else:
            code = int(rng.choice([200, 404, 500]))
            msg = (f"HTTP/1.1 {code} X\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
                   f"Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok").encode()
        out.append(msg[:512])
    return out


class _Url:
    __slots__ = ("url",)

    def __init__(self):
        self.url = b""

    def on_url(self, url):
        self.url += url


def with_httptools(payloads):
    res = []
    for p in payloads:
        if p.startswith(b"HTTP/"):
            parser = httptools.HttpResponseParser(None)
            parser.feed_data(p)
            res.append((0, parser.get_status_code(), parser.get_http_version()))
        else:
            cb = _Url()
            parser = httptools.HttpRequestParser(cb)
            parser.feed_data(p)
            res.append((parser.get_method(), httptools.parse_url(cb.url).path, parser.get_http_version()))
    return res


def main():
    rng = np.random.default_rng(1)
    payloads = make_payloads(N, rng)
    arr = np.zeros((N, 512), np.uint8)
    lens = np.zeros(N, np.int32)
    for i, p in enumerate(payloads):
        arr[i, :len(p)] = np.frombuffer(p, np.uint8)
        lens[i] = len(p)
    # 200 distinct request lines (a service's routes), each many times
    distinct = [p[:_records.HTTP_HEAD_LEN] for p in payloads if not p.startswith(b"HTTP")][:200]
    reqs = [distinct[i] for i in rng.integers(0, len(distinct), N // 2)]
    x = np.zeros(len(reqs), _records.HTTP_EXCHANGE_DTYPE)
    x["head"] = [r.ljust(_records.HTTP_HEAD_LEN, b"\0") for r in reqs]
    x["head_len"] = [len(r) for r in reqs]
    x["pid"] = rng.integers(1, 50, len(x))  # 50 processes, 2 directions, 2 statuses
    x["direction"] = rng.integers(1, 3, len(x))
    x["status"] = rng.choice([200, 404], len(x))
    x["latency"] = rng.integers(1, 10**6, len(x))

    # same answers first
    ref = with_httptools(payloads[:2000])
    kind, method, status, plen = _http.first_lines(arr[:2000], lens[:2000])
    for i, r in enumerate(ref):
        if kind[i] == 2:
            assert status[i] == r[1], i
        else:
            assert _http.METHODS[method[i]].encode() == r[0] and plen[i] == len(r[1]), i

    t_ht = best_of(lambda: with_httptools(payloads), 3)
    t_fl = best_of(lambda: _http.first_lines(arr, lens), 5)
    pipe = HttpPipeline()
    t_x = best_of(lambda: pipe.partial(x), 5)
    t_gb = best_of(lambda: group_by_partial(x), 5)
    print(f"payloads: {N}")
    print(f"httptools_per_s: {N / t_ht:.0f}")
    print(f"first_lines_per_s: {N / t_fl:.0f}")
    print(f"first_lines_vs_httptools: {t_ht / t_fl:.1f}")
    print(f"exchange_records: {len(x)} in {pipe.partial(x).num_rows} groups")
    print(f"exchanges_ns_per_record: {t_x / len(x) * 1e9:.0f}")
    print(f"exchanges_vs_arrow_group_by: {t_gb / t_x:.1f}")


def group_by_partial(x):
    """The same sums with one arrow row per record and a group_by."""
    method, version, truncated, path = _http.exchange_columns(x)
    t = pa.table({"pid": x["pid"], "direction": x["direction"], "laddr": x["laddr"].view("S16"),
                  "raddr": x["raddr"].view("S16"), "lport": x["lport"], "rport": x["rport"],
                  "comm": x["comm"], "status": x["status"], "method": method, "path": path,
                  "version": version, "truncated": truncated, "latency": x["latency"].astype(np.int64),
                  "req": x["req_bytes"].astype(np.int64), "resp": x["resp_bytes"].astype(np.int64)})
    keys = ["pid", "direction", "laddr", "raddr", "lport", "rport", "comm", "status", "method", "path",
            "version", "truncated"]
    return t.group_by(keys, use_threads=False).aggregate(
        [("latency", "count"), ("latency", "sum"), ("req", "sum"), ("resp", "sum")])


if __name__ == "__main__":
    main()

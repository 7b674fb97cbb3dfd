"""The whole collector against real HTTP programs on loopback: nginx and a
Python http.server as servers; curl, http.client with keep-alive and a raw
socket sending pipelined requests as clients. The httpflow points must say
exactly what the clients did: request counts per path and status, seen from
both ends (the clients' outgoing points and the servers' incoming points),
equal bytes on both ends, latency > 0, truncated paths. Every point is
checked against the schema. Only points of our own server ports count."""
import os
import subprocess
import sys
from collections import Counter

import pytest

from dkebpf.plugins import requirements

from support import http_clients, traffic
from support.httpflow_points import counts, http_points, sums, wait_counts
from support.http_clients import keep_alive
from support.nginx import LONG_PREFIX, Nginx, free_port
from support.schema import check_point
from support.timed_exchange import timed_exchanges

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("ebpf-net",), ("httpflow",)))]

LONG_PATH = LONG_PREFIX + "x" * 600  # longer than the 256-byte request head kept


def curl(url, n=1):
    for _ in range(n):
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True, timeout=20)


def check_schema(receiver):
    pts = receiver.points(measurement="httpflow")
    assert pts, "no httpflow point at all"
    for p in pts:
        check_point("httpflow", p, extra_tags=("team", "env"))
        assert p.tags["source"] == "httpflow" and p.tags["host"] == "e2e-host"
        assert p.fields["latency"] > 0
    assert {i for (_c, i, _p) in receiver.records if "httpflow" in i} == {"ebpf-net/httpflow"}


def test_nginx_with_curl_keep_alive_and_pipelining(collector, receiver, tmp_path):
    collector.start()
    with Nginx(tmp_path) as ngx:
        base = f"http://127.0.0.1:{ngx.port}"
        curl(base + "/ok", 3)
        curl(base + "/missing", 2)
        curl(base + "/boom")
        curl(base + LONG_PATH)
        assert keep_alive("127.0.0.1", ngx.port, ["/ok?i=1", "/boom", "/ok?i=2", "/boom", "/ok"]) == \
            [200, 500, 200, 500, 200]
        # in a process of its own, to check its bytes alone
        out = subprocess.run([sys.executable, http_clients.__file__, "pipelined", "127.0.0.1", str(ngx.port),
                              "/ok", "/missing", "/ok"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        pipe_pid, pipe_sent = map(int, out.stdout.split())
        long_path = LONG_PATH[:256 - len("GET ")]  # the request head the kernel keeps (HTTP_HEAD_MAX)
        want = Counter({("GET", "/ok", 200): 3 + 3 + 2, ("GET", "/missing", 404): 2 + 1,
                        ("GET", "/boom", 500): 1 + 2, ("GET", long_path, 200): 1})
        pts = wait_counts(receiver, ngx.port, want)
        assert counts(pts, "outgoing") == want
        assert counts(pts, "incoming") == want
    # both ends of each connection moved the same bytes
    for a, b in (("bytes_written", "bytes_read"), ("bytes_read", "bytes_written")):
        assert sums(pts, "outgoing", a) == sums(pts, "incoming", b)
    assert all(v > 0 for v in sums(pts, "outgoing", "bytes_read").values())
    for p in pts:
        assert p.fields["truncated"] is (p.fields["path"] == long_path)
        assert p.fields["http_version"] == "1.1"
        t = p.tags
        assert (t["server_ip"], t["client_ip"], t["transport"], t["family"]) == \
            ("127.0.0.1", "127.0.0.1", "tcp", "IPv4")
        if t["direction"] == "incoming":
            assert t["process_name"] == "nginx" and t["src_port"] == str(ngx.port)
        else:
            assert t["dst_port"] == str(ngx.port) and t["client_port"] == "*"
    procs = Counter(p.tags["process_name"] for p in pts if p.tags["direction"] == "outgoing")
    # curl, the pipelined client (sys.executable) and the keep-alive client,
    # which runs in this process (named "pytest" when started as .venv/bin/pytest)
    with open("/proc/self/comm") as f:
        me = f.read().strip()
    assert set(procs) == {"curl", os.path.basename(sys.executable)[:15], me}
    # the pipelined client's bytes: exactly what it sent, three requests
    mine = [p for p in pts if p.tags["pid"] == str(pipe_pid)]
    assert sum(p.fields["count"] for p in mine) == 3
    assert sum(p.fields["bytes_written"] for p in mine) == pipe_sent
    check_schema(receiver)


def test_expect_100_continue_pairs_with_the_final_response(collector, receiver, tmp_path):
    """curl posting 64 KiB with Expect: 100-continue: nginx answers 100,
    reads the body, then 200. The request pairs with the 200; the 100 is
    no point of its own and no response is left unmatched."""
    collector.start()
    body = tmp_path / "body"
    body.write_bytes(b"x" * 65536)
    with Nginx(tmp_path) as ngx:
        out = subprocess.run(["curl", "-sv", "-o", "/dev/null", "-H", "Expect: 100-continue",
                              "--data-binary", f"@{body}", f"http://127.0.0.1:{ngx.port}/upload"],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0 and "< HTTP/1.1 100 Continue" in out.stderr, out.stderr
        want = Counter({("POST", "/upload", 200): 1, ("POST", "/ok", 200): 1})  # nginx proxies to /ok
        pts = wait_counts(receiver, ngx.port, want)
        assert counts(pts, "outgoing") == want and counts(pts, "incoming") == want
    up = {p.tags["direction"]: p for p in pts if p.fields["path"] == "/upload"}
    assert up["outgoing"].tags["process_name"] == "curl" and up["incoming"].tags["process_name"] == "nginx"
    assert up["outgoing"].fields["bytes_written"] > 65536
    # the response bytes include the interim "HTTP/1.1 100 Continue\r\n\r\n"
    assert up["outgoing"].fields["bytes_read"] > len(b"HTTP/1.1 100 Continue\r\n\r\n")
    for a, b in (("bytes_written", "bytes_read"), ("bytes_read", "bytes_written")):
        assert up["outgoing"].fields[a] == up["incoming"].fields[b]
    check_schema(receiver)


def test_python_http_server_both_sides(collector, receiver, tmp_path):
    collector.start()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("<p>hello</p>\n" * 100)
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                           cwd=tmp_path / "www", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        traffic.wait_until(lambda: subprocess.run(["curl", "-s", "-o", "/dev/null", "--head",
                                                   f"http://127.0.0.1:{port}/ready-probe"]).returncode == 0, 10)
        base = f"http://127.0.0.1:{port}"
        curl(base + "/index.html", 2)
        curl(base + "/nope")
        # HEAD probes: 1 or more until the server answered; counted below
        want = Counter({("GET", "/index.html", 200): 2, ("GET", "/nope", 404): 1})
        pts = wait_counts_get(receiver, port, want)
    finally:
        srv.terminate()
        srv.wait(10)
    assert gets(pts, "outgoing") == want and gets(pts, "incoming") == want
    for a, b in (("bytes_written", "bytes_read"), ("bytes_read", "bytes_written")):
        assert sums(pts, "outgoing", a) == sums(pts, "incoming", b)
    idx = [p for p in pts if p.fields["path"] == "/index.html" and p.tags["direction"] == "outgoing"]
    # the body plus the headers of two responses
    assert sum(p.fields["bytes_read"] for p in idx) > 2 * len("<p>hello</p>\n" * 100)
    for p in pts:
        assert p.fields["http_version"] == "1.1"  # the request's version (the server answers 1.0)
        if p.tags["direction"] == "incoming":
            assert p.tags["process_name"].startswith("python")
    check_schema(receiver)


def gets(points, direction):
    return Counter({k: v for k, v in counts(points, direction).items() if k[0] == "GET"})


def wait_counts_get(receiver, port, want, timeout=40):
    def done():
        pts = http_points(receiver, port)
        return pts if gets(pts, "outgoing") == want and gets(pts, "incoming") == want else None
    return traffic.wait_until(done, timeout) or http_points(receiver, port)


def test_latency_lies_within_the_clients_own_timings(collector, receiver):
    """latency is in ns: at least the 50 ms the server waits before it
    answers (in µs or ms it would be far less), at most what the client
    measured from sending the request to the answer's first byte; from
    both ends."""
    delay_s = 0.05
    collector.start()
    request = b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    port, timings = timed_exchanges(request, response, n=3, delay_s=delay_s)
    want = Counter({("GET", "/slow", 200): 3})
    pts = wait_counts(receiver, port, want)
    assert counts(pts, "outgoing") == want and counts(pts, "incoming") == want
    longest = max(t.answer_ns for t in timings)
    for p in pts:
        assert delay_s * 1e9 <= p.fields["latency"] <= longest, (p, longest)

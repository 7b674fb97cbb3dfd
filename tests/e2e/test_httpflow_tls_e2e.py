"""httpflow-tls end to end: the collector with `--l7net-enabled
httpflow,httpflow-tls`, then an nginx serving HTTPS (self-signed
certificate made here) on a free loopback port, started after the
collector; curl -k and Python's ssl module as clients. Both ends link
OpenSSL, so every request is seen twice: outgoing from the client, incoming
at nginx. Counts per method, path and status must be exact on both ends:
the syscall capture, which sees only ciphertext on these sockets, must add
nothing. Only points of our own server port count."""
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from dkebpf.plugins import requirements

from support import traffic
from support.httpflow_points import counts, http_points, sums, wait_counts
from support.nginx import Nginx
from support.schema import check_point
from support.tls_nginx import ROUTES, TlsNginx, curl, private_libssl

pytestmark = [pytest.mark.e2e,
              pytest.mark.requires(*requirements(("ebpf-net",), ("httpflow", "httpflow-tls")), "libssl")]

L7 = ("--l7net-enabled", "httpflow,httpflow-tls")


def check_points(receiver, pts, port):
    for p in pts:
        check_point("httpflow", p, extra_tags=("team", "env"))
        assert p.tags["source"] == "httpflow" and p.tags["host"] == "e2e-host"
        assert p.fields["latency"] > 0 and p.fields["http_version"] == "1.1"
        assert p.fields["truncated"] is False
        t = p.tags
        assert (t["server_ip"], t["client_ip"], t["transport"], t["family"]) == \
            ("127.0.0.1", "127.0.0.1", "tcp", "IPv4")
        if t["direction"] == "incoming":
            assert t["process_name"] == "nginx" and t["src_port"] == str(port)
        else:
            assert t["dst_port"] == str(port) and t["client_port"] == "*"
    # each connection moved the same plaintext bytes, seen from either end
    for a, b in (("bytes_written", "bytes_read"), ("bytes_read", "bytes_written")):
        assert sums(pts, "outgoing", a) == sums(pts, "incoming", b)
    assert all(v > 0 for v in sums(pts, "outgoing", "bytes_read").values())


PY_POST = textwrap.dedent("""
    import os, socket, ssl, sys
    port, n = int(sys.argv[1]), int(sys.argv[2])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = b"y" * 2000
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as s:
        f = s.makefile("rb")
        for i in range(n):
            req = (b"POST /tls/created HTTP/1.1\\r\\nHost: t\\r\\nContent-Length: %d\\r\\n\\r\\n"
                   % len(body)) + body
            s.sendall(req)
            sent += len(req)
            status = f.readline()
            assert status.startswith(b"HTTP/1.1 201"), status
            length = 0
            while True:
                line = f.readline()
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line in (b"\\r\\n", b""):
                    break
            f.read(length)
    print(os.getpid(), sent)
""")


def test_https_nginx_started_after_collector(collector, receiver, tmp_path):
    collector.start(*L7)
    srv = TlsNginx(tmp_path).start()  # after the collector: covered from its first request
    try:
        assert curl([srv.url("/tls/ok")])[1] == [200]
        assert curl([srv.url("/tls/ok")])[1] == [200]
        assert curl([srv.url("/tls/missing")])[1] == [404]
        # one kept-alive connection, several requests
        paths = ["/tls/ok", "/tls/broken", "/tls/missing", "/tls/ok", "/tls/broken"]
        assert curl([srv.url(p) for p in paths])[1] == [ROUTES[p][0] for p in paths]
        # Python's ssl: SSL_write_ex/SSL_read_ex, bodies larger than the capture
        out = subprocess.run([sys.executable, "-c", PY_POST, str(srv.port), "3"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        py_pid, py_sent = map(int, out.stdout.split())
        want = Counter({("GET", "/tls/ok", 200): 4, ("GET", "/tls/missing", 404): 2,
                        ("GET", "/tls/broken", 503): 2, ("POST", "/tls/created", 201): 3})
        pts = wait_counts(receiver, srv.port, want)
    finally:
        srv.stop()
    assert counts(pts, "outgoing") == want
    assert counts(pts, "incoming") == want
    check_points(receiver, pts, srv.port)
    procs = Counter(p.tags["process_name"] for p in pts if p.tags["direction"] == "outgoing")
    assert set(procs) == {"curl", os.path.basename(sys.executable)[:15]}
    # the Python client's request bytes: exactly what it wrote (bodies included)
    mine = [p for p in pts if p.tags["pid"] == str(py_pid)]
    assert sum(p.fields["count"] for p in mine) == 3
    assert sum(p.fields["bytes_written"] for p in mine) == py_sent
    # nothing more arrives later (no late duplicates, e.g. from the syscall capture)
    time.sleep(3)
    assert counts(http_points(receiver, srv.port), "outgoing") == want
    assert counts(http_points(receiver, srv.port), "incoming") == want
    assert "httpflow-tls: uprobes on" in collector.log_text()


def test_private_libssl_of_a_later_process_found_by_rescan(collector, receiver, tmp_path):
    """nginx started after the collector with its own copy of libssl (a file
    the collector has never seen, as in a container image): the periodic
    rescan finds it in the worker's maps and attaches to it."""
    collector.start(*L7)
    lib_dir = private_libssl(str(tmp_path))
    srv = TlsNginx(tmp_path, lib_dir=lib_dir).start()
    copy = os.path.join(lib_dir, "libssl.so.3")
    try:
        assert traffic.wait_until(lambda: f"uprobes to {copy}" in collector.log_text(), 30), \
            collector.log_text()[-2000:]
        paths = ["/tls/ok", "/tls/missing", "/tls/ok"]
        assert curl([srv.url(p) for p in paths])[1] == [200, 404, 200]
        want = Counter({("GET", "/tls/ok", 200): 2, ("GET", "/tls/missing", 404): 1})
        pts = wait_counts(receiver, srv.port, want)
    finally:
        srv.stop()
    assert counts(pts, "outgoing") == want and counts(pts, "incoming") == want
    check_points(receiver, pts, srv.port)


def test_without_tls_the_ciphertext_makes_no_point(collector, receiver, tmp_path):
    """httpflow alone: the syscall capture sees HTTPS only as ciphertext and
    reports nothing for it, while plain HTTP next to it is reported."""
    collector.start("--l7net-enabled", "httpflow")
    srv = TlsNginx(tmp_path).start()
    try:
        with Nginx(tmp_path) as plain:
            assert curl([srv.url("/tls/ok"), srv.url("/tls/missing")])[1] == [200, 404]
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{plain.port}/ok"],
                           check=True, timeout=20)
            want = Counter({("GET", "/ok", 200): 1})
            assert counts(wait_counts(receiver, plain.port, want), "incoming") == want
    finally:
        srv.stop()
    time.sleep(3)  # one more interval
    assert http_points(receiver, srv.port) == []
    assert "httpflow-tls" not in collector.log_text()

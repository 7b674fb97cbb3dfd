"""tls.bpf.o on the real kernel: uprobes on the real libssl, real nginx and
curl (and Python's ssl, which calls the _ex functions) over TLS on loopback;
the exchange records paired in the kernel checked exactly: request heads,
status, plaintext byte counts each way, tuple, process."""
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest

from support.tls_nginx import ROUTES, TlsNginx, curl, private_libssl

pytestmark = [pytest.mark.kernel, pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast", "libssl")]

SYSTEM_LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


@pytest.fixture
def probes(bpf_ok):
    from dkebpf.plugins.tls_probes import TlsProbes

    cfg = SimpleNamespace(host_proc="/proc", host_root="", ipv6_disabled=False)
    tp = TlsProbes(cfg, logging.getLogger("test-tls"), os.getpid())
    tp.start()
    yield tp
    tp.stop()


@pytest.fixture
def nginx(tmp_path):
    servers = []

    def start(host="127.0.0.1", lib_dir=None):
        s = TlsNginx(tmp_path / f"nginx{len(servers)}", host, lib_dir)
        os.makedirs(s.tmp, exist_ok=True)
        servers.append(s)
        return s.start()

    yield start
    for s in servers:
        s.stop()


def records(tp, pids, want=0, timeout=5.0):
    """The records of the given processes now in the ring (records of other
    processes on this machine are left out), waiting up to timeout for
    `want` of them (the last exchange of a connection comes with its end)."""
    got = []
    end = time.monotonic() + timeout
    while True:
        tp.bpf.rings.events.poll(100)
        ev = tp.bpf.rings.events.take()
        got.append(ev[np.isin(ev["pid"], pids)])
        n = sum(len(g) for g in got)
        if (want and n >= want) or time.monotonic() > end or (not want and time.monotonic() > end - timeout + 0.3):
            break
    ev = np.concatenate(got)
    return ev[np.argsort(ev["ts_req"], kind="stable")]


def run_python(script, *args):
    """Run a client script; returns (Popen, stdout). Killed when late."""
    p = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    return p, out


def head(e):
    return bytes(e["head"])[: int(e["head_len"])]


def ip_bytes(text):
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return socket.inet_pton(socket.AF_INET, text) + b"\0" * 12


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_curl_and_nginx_plaintext_both_ends(probes, nginx, host):
    from dkebpf import _records as R

    srv = nginx(host)
    paths = ["/tls/ok", "/tls/missing", "/tls/created", "/tls/ok", "/tls/broken"]
    cpid, codes = curl([srv.url(p) for p in paths])
    assert codes == [ROUTES[p][0] for p in paths]
    ev = records(probes, [cpid, srv.worker], want=2 * len(paths))
    assert (ev["source"] == R.HTTP_SSL).all() and (ev["proto"] == 6).all()
    assert (ev["family"] == (6 if ":" in host else 4)).all()
    c, s = ev[ev["pid"] == cpid], ev[ev["pid"] == srv.worker]
    # one exchange per request, seen from both ends, in order
    for x in (c, s):
        assert [head(e).split(b"\r\n")[0] for e in x] == [f"GET {p} HTTP/1.1".encode() for p in paths]
        assert x["status"].tolist() == [ROUTES[p][0] for p in paths]
        assert (x["latency"] > 0).all()
        # the last one finished by the connection's end
        assert x["flags"].tolist() == [0] * (len(paths) - 1) + [R.HTTP_CLOSED]
    assert set(c["direction"].tolist()) == {R.DIR_OUTGOING}
    assert set(s["direction"].tolist()) == {R.DIR_INCOMING}
    # the same plaintext bytes each way, counted at both ends
    assert c["req_bytes"].tolist() == s["req_bytes"].tolist()
    assert c["resp_bytes"].tolist() == s["resp_bytes"].tolist()
    assert all(int(e["req_bytes"]) == int(e["head_len"]) == len(head(e)) for e in c)
    # one connection, seen from both ends
    assert (c["rport"] == srv.port).all() and (s["lport"] == srv.port).all()
    assert (c["lport"] == s["rport"]).all() and c["lport"][0] > 0
    assert bytes(c["raddr"][0]) == bytes(c["laddr"][0]) == ip_bytes(host) == bytes(s["laddr"][0])
    assert len({int(e["sk"]) for e in c}) == 1
    assert set(c["tid"].tolist()) == {cpid}  # curl is single-threaded
    assert set(c["comm"].tolist()) == {b"curl"} and set(s["comm"].tolist()) == {b"nginx"}
    counters = probes.counters()
    assert counters["kernel_drop_tls_events_ring_full"] == 0


PY_CLIENT = textwrap.dedent("""
    import socket, ssl, sys
    host, port, body_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = b"x" * body_len
    req = (b"POST /tls/created HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n"
           b"Content-Length: %d\\r\\n\\r\\n" % body_len) + body
    with socket.create_connection((host, port)) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(req)   # one SSL_write_ex of the whole request
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    print(len(req), len(got), got.split(b"\\r\\n")[0].decode())
""")


def test_python_ssl_ex_functions_truncation_and_totals(probes, nginx):
    """Python's ssl module calls SSL_write_ex/SSL_read_ex: the byte count
    comes from *written/*readbytes; a request longer than the head kept is
    reported with its first HTTP_HEAD_MAX bytes and counted in full. nginx
    reads the request in pieces (header buffer, then body): the pieces
    count toward the one exchange; both ends agree on the bytes."""
    from dkebpf import _records as R

    srv = nginx()
    proc, out = run_python(PY_CLIENT, "127.0.0.1", srv.port, 3000)
    req_len, resp_len = int(out.split()[0]), int(out.split()[1])
    ev = records(probes, [proc.pid, srv.worker], want=2)
    assert len(ev) == 2
    c, s = ev[ev["pid"] == proc.pid][0], ev[ev["pid"] == srv.worker][0]
    for e in (c, s):
        assert head(e).startswith(b"POST /tls/created HTTP/1.1\r\n")
        assert int(e["head_len"]) == R.HTTP_HEAD_LEN
        assert (int(e["req_bytes"]), int(e["resp_bytes"])) == (req_len, resp_len)
        assert int(e["status"]) == 201 and int(e["flags"]) == R.HTTP_CLOSED
    assert c["direction"] == R.DIR_OUTGOING and s["direction"] == R.DIR_INCOMING
    assert c["rport"] == srv.port


def test_late_library_found_by_rescan(probes, nginx, tmp_path):
    """An nginx started after the probes, with its own copy of libssl (another
    inode, as in a container): not covered until a rescan finds it in the
    worker's maps, then covered."""
    from dkebpf import _records as R

    lib_dir = private_libssl(str(tmp_path))
    srv = nginx(lib_dir=lib_dir)
    copy = os.path.join(lib_dir, "libssl.so.3")
    assert copy not in probes.attached_paths()
    cpid, codes = curl([srv.url("/tls/ok")])
    assert codes == [200]
    ev = records(probes, [cpid, srv.worker], want=1)
    # curl uses the system libssl (attached), nginx the copy (not yet)
    assert ev["pid"].tolist() == [cpid]

    assert probes.rescan(force=True) == 1
    assert copy in probes.attached_paths()
    cpid, codes = curl([srv.url("/tls/ok"), srv.url("/tls/missing")])
    assert codes == [200, 404]
    ev = records(probes, [cpid, srv.worker], want=4)
    s = ev[ev["pid"] == srv.worker]
    assert [head(e).split(b"\r\n")[0] for e in s] == [b"GET /tls/ok HTTP/1.1", b"GET /tls/missing HTTP/1.1"]
    assert s["status"].tolist() == [200, 404]
    # a second rescan finds nothing new
    assert probes.rescan(force=True) == 0


MEMORY_BIO_CLIENT = textwrap.dedent("""
    import socket, ssl, sys
    host, port = sys.argv[1], int(sys.argv[2])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out)
    sock = socket.create_connection((host, port))

    def pump():
        data = out.read()
        if data:
            sock.sendall(data)

    def feed():
        data = sock.recv(65536)
        if not data:
            inc.write_eof()
            return False
        inc.write(data)
        return True

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
            feed()
    pump()
    writes = obj.write(b"GET /tls/ok HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n") and 1
    pump()
    reads = 0
    while True:
        try:
            if not obj.read(65536):
                break
            reads += 1
        except ssl.SSLWantReadError:
            if not feed():
                break
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
    print(writes, reads)
""")


def test_memory_bio_has_no_socket_and_is_counted(probes, nginx):
    """An application that moves the ciphertext itself (memory BIOs) makes
    no socket call inside SSL_*: its records have no connection and are
    dropped, each one counted."""
    srv = nginx()
    before = probes.counters()["kernel_drop_tls_socket_unknown"]
    p, out = run_python(MEMORY_BIO_CLIENT, "127.0.0.1", srv.port)
    writes, reads = map(int, out.split())
    assert writes == 1 and reads >= 1
    ev = records(probes, [p.pid])
    assert len(ev) == 0
    assert probes.counters()["kernel_drop_tls_socket_unknown"] - before == writes + reads


def test_scan_cost(probes):
    """What one rescan of /proc costs here (reported, and bounded)."""
    t0 = time.perf_counter()
    for _ in range(5):
        probes.rescan(force=True)
    per_scan = (time.perf_counter() - t0) / 5
    n = len([p for p in os.listdir("/proc") if p.isdigit()])
    print(f"tls rescan: {per_scan * 1e3:.2f} ms for {n} processes")
    assert per_scan < 1.0

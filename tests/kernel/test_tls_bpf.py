"""tls.bpf.o on the real kernel: uprobes on the real libssl, real nginx and
curl (and Python's ssl, which calls the _ex functions) over TLS on loopback;
the raw l7_event records checked exactly: plaintext, byte counts, tuple,
process."""
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

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


def records(tp, pids, settle=0.3):
    """All records of the given processes now in the ring (records of other
    processes on this machine are left out)."""
    time.sleep(settle)
    tp.bpf.rings.events.poll(100)
    ev = tp.bpf.rings.events.take()
    keep = ev["pid"] == -1
    for p in pids:
        keep |= ev["pid"] == p
    return ev[keep]


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


def payload(e):
    return bytes(e["payload"])[: int(e["cap_len"])]


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
    ev = records(probes, [cpid, srv.worker])
    assert (ev["source"] == R.L7_SSL).all() and (ev["proto"] == 6).all()
    assert (ev["family"] == (6 if ":" in host else 4)).all()

    def of(pid, op):
        return [e for e in ev if e["pid"] == pid and e["op"] == op]

    # requests: curl writes each request line once, nginx reads it once
    for pid in (cpid, srv.worker):
        reqs = of(pid, R.L7_SEND if pid == cpid else R.L7_RECV)
        assert [payload(e).split(b"\r\n")[0] for e in reqs] == \
            [f"GET {p} HTTP/1.1".encode() for p in paths]
        assert all(int(e["bytes"]) == int(e["cap_len"]) == len(payload(e)) for e in reqs)
    # responses: nginx writes one status line per request; curl reads them
    for pid in (srv.worker, cpid):
        resp = of(pid, R.L7_RECV if pid == cpid else R.L7_SEND)
        status = [payload(e)[:12] for e in resp if payload(e).startswith(b"HTTP/1.1 ")]
        assert status == [f"HTTP/1.1 {ROUTES[p][0]}".encode() for p in paths]
    # one connection, seen from both ends
    c, s = of(cpid, R.L7_SEND)[0], of(srv.worker, R.L7_RECV)[0]
    assert c["rport"] == s["lport"] == srv.port
    assert c["lport"] == s["rport"] and c["lport"] > 0
    assert bytes(c["raddr"]) == bytes(c["laddr"]) == ip_bytes(host) == bytes(s["laddr"])
    assert len({int(e["sk"]) for e in of(cpid, R.L7_SEND) + of(cpid, R.L7_RECV)}) == 1
    # curl is single-threaded; the close record has no thread
    assert {int(e["tid"]) for e in ev if e["pid"] == cpid and e["op"] != R.L7_CLOSE} == {cpid}
    assert c["comm"] == b"curl" and s["comm"] == b"nginx"
    # the same bytes of a request, counted at both ends
    assert [int(e["bytes"]) for e in of(cpid, R.L7_SEND)] == [int(e["bytes"]) for e in of(srv.worker, R.L7_RECV)]
    # the connection's end: plaintext totals, equal seen from both ends
    cc, sc = of(cpid, R.L7_CLOSE), of(srv.worker, R.L7_CLOSE)
    assert len(cc) == len(sc) == 1
    assert (int(cc[0]["sk_sent"]), int(cc[0]["sk_recv"])) == (int(sc[0]["sk_recv"]), int(sc[0]["sk_sent"]))
    assert int(cc[0]["sk_sent"]) == sum(int(e["bytes"]) for e in of(cpid, R.L7_SEND))
    # each response start knows when the last request byte arrived
    for e in of(srv.worker, R.L7_SEND):
        assert 0 < int(e["ts_other_ns"]) <= int(e["ts_ns"])
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
    comes from *written/*readbytes; a write longer than L7_PAYLOAD_MAX is
    captured up to it and counted in full. nginx reads the request in
    pieces (header buffer, then body): one record for the message start,
    the rest counted; the close records carry the plaintext totals of both
    ends, which agree."""
    from dkebpf import _records as R

    srv = nginx()
    proc, out = run_python(PY_CLIENT, "127.0.0.1", srv.port, 3000)
    req_len, resp_len = int(out.split()[0]), int(out.split()[1])
    ev = records(probes, [proc.pid, srv.worker])
    server = [e for e in ev if e["pid"] == srv.worker and e["op"] == R.L7_RECV]
    assert len(server) == 1 and int(server[0]["sk_recv"]) == 0
    assert payload(server[0]).startswith(b"POST /tls/created HTTP/1.1\r\n")
    assert server[0]["direction"] == R.DIR_INCOMING
    closes = {int(e["pid"]): e for e in ev if e["op"] == R.L7_CLOSE}
    assert set(closes) == {proc.pid, srv.worker}
    c, s = closes[proc.pid], closes[srv.worker]
    assert (int(c["sk_sent"]), int(c["sk_recv"])) == (req_len, resp_len)
    assert (int(s["sk_recv"]), int(s["sk_sent"])) == (req_len, resp_len)
    assert c["direction"] == R.DIR_OUTGOING and c["flags"] == R.L7_COUNTED
    ev = ev[ev["pid"] == proc.pid]
    sends = [e for e in ev if e["op"] == R.L7_SEND]
    assert len(sends) == 1
    e = sends[0]
    assert int(e["bytes"]) == req_len > R.L7_PAYLOAD_LEN
    assert int(e["cap_len"]) == R.L7_PAYLOAD_LEN
    assert payload(e).startswith(b"POST /tls/created HTTP/1.1\r\n")
    assert payload(e).endswith(b"x" * 100)
    recv = [x for x in ev if x["op"] == R.L7_RECV]
    assert payload(recv[0]).startswith(b"HTTP/1.1 201 Created\r\n")
    assert e["rport"] == srv.port


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
    ev = records(probes, [cpid, srv.worker])
    # curl uses the system libssl (attached), nginx the copy (not yet)
    assert sorted(e["pid"] for e in ev if e["op"] == R.L7_SEND) == [cpid]
    assert not any(e["pid"] == srv.worker for e in ev)

    assert probes.rescan(force=True) == 1
    assert copy in probes.attached_paths()
    cpid, codes = curl([srv.url("/tls/ok"), srv.url("/tls/missing")])
    assert codes == [200, 404]
    ev = records(probes, [cpid, srv.worker])
    got = [payload(e).split(b"\r\n")[0] for e in ev if e["pid"] == srv.worker and e["op"] == R.L7_RECV]
    assert got == [b"GET /tls/ok HTTP/1.1", b"GET /tls/missing HTTP/1.1"]
    sent = [payload(e)[:12] for e in ev if e["pid"] == srv.worker and e["op"] == R.L7_SEND]
    assert sent == [b"HTTP/1.1 200", b"HTTP/1.1 404"]
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

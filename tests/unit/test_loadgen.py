"""dkebpf._loadgen, the load of `dkebpf bench`: its server answers real
clients (http.client over TCP and TLS, dnspython, a UDP socket) correctly, and its client
keeps the asked rate and counts what the server counts. Loopback only."""
import contextlib
import errno
import http.client
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from dkebpf._loadgen import Server, run_client
from dkebpf.bench.load import drive


def cpu_wait_s():
    """Seconds the threads of this process (the client's and the server's
    among them) have spent runnable but waiting for a CPU: the run delay of
    schedstat."""
    ns = 0
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that has just ended
            ns += int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[1])
    return ns / 1e9


@pytest.fixture
def server():
    srv = Server("127.0.0.1")  # DNS on a free port here: 53 needs root
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    yield srv
    srv.stop()
    t.join(60)  # generous: a loaded machine may be slow to run it; close() under a running loop is unsafe
    assert not t.is_alive(), "the server loop did not end on stop()"
    srv.close()


def test_http_keepalive_and_close(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=5)
    for _ in range(3):  # one connection, three requests
        conn.request("GET", "/anything")
        r = conn.getresponse()
        assert (r.status, r.read(), r.getheader("Connection")) == (200, b"ok\n", None)
    conn.request("GET", "/", headers={"Connection": "close"})
    r = conn.getresponse()
    assert (r.status, r.read(), r.getheader("Connection")) == (200, b"ok\n", "close")
    conn.close()
    c = server.counters()
    assert c["http_requests"] == 4 and c["tcp_accepted"] == 1


def test_https_keepalive(server):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench server's own self-signed certificate
    conn = http.client.HTTPSConnection("127.0.0.1", server.ports["https"], context=ctx, timeout=5)
    for _ in range(3):
        conn.request("GET", "/")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"ok\n")
    cert = ssl.DER_cert_to_PEM_cert(conn.sock.getpeercert(binary_form=True))
    assert "BEGIN CERTIFICATE" in cert
    conn.close()
    c = server.counters()
    assert c["http_requests"] == 3 and c["tls_handshakes"] == 1


def test_dns_answers_a_and_nothing_else(server):
    port = server.ports["dns"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # not a query: no answer
        s.settimeout(0.3)
        s.sendto(b"\x12\x34garbage", ("127.0.0.1", port))
        with pytest.raises(socket.timeout):
            s.recv(512)
    # the queries below queue behind the garbage on the server's socket: once
    # they are answered, the garbage has been counted, however late the server ran
    q = dns.message.make_query("bench.example.", "A")
    a = dns.query.udp(q, "127.0.0.1", port=port, timeout=5)
    assert a.id == q.id and a.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rrset in a.answer for rr in rrset] == ["127.0.0.1"]
    assert a.answer[0].name.to_text() == "bench.example."
    q6 = dns.message.make_query("bench.example.", "AAAA", use_edns=0)
    a6 = dns.query.udp(q6, "127.0.0.1", port=port, timeout=5)
    assert a6.id == q6.id and a6.answer == [] and a6.rcode() == dns.rcode.NOERROR
    assert server.counters()["dns_answered"] == 2 and server.counters()["bad_requests"] == 1


def test_udp_echo(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"x" * 100, ("127.0.0.1", server.ports["udp"]))
        assert s.recv(2048) == b"x" * 100


def test_udp_ports_are_the_servers_alone(server):
    # a socket with SO_REUSEADDR (as another bench server's once had) may not
    # share a UDP port of ours: the newer of two sharing sockets receives the
    # datagrams, so an echo or a DNS answer would go missing
    for kind in ("udp", "dns", "pkt"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as exc:
                s.bind(("127.0.0.1", server.ports[kind]))
            assert exc.value.errno == errno.EADDRINUSE, kind


@pytest.mark.parametrize("kind,port", [("http", "http"), ("conn", "http"), ("udp", "udp"), ("dns", "dns"),
                                       ("https", "https"), ("pkt", "pkt")])
def test_client_keeps_the_rate_and_the_server_agrees(server, kind, port):
    before, waited = server.counters(), cpu_wait_s()
    r = run_client(kind, "127.0.0.1", server.ports[port], 16, 400, 1.0)
    waited = cpu_wait_s() - waited
    served = {"http": "http_requests", "conn": "http_requests", "udp": "udp_echoed", "dns": "dns_answered",
              "https": "http_requests", "pkt": "udp_discarded"}[kind]
    end = time.monotonic() + 2
    while server.counters()[served] - before[served] < r["done"] and time.monotonic() < end:
        time.sleep(0.01)  # one-way datagrams may still wait in the server's socket
    after = server.counters()
    seen = {k: v for k, v in r.items() if k != "hist"}
    assert r["errors"] == 0 and r["timeouts"] == 0, seen
    # every operation begun is answered, failed, timed out or still in flight, at most one per slot
    assert r["started"] == r["done"] + r["errors"] + r["timeouts"] + r["in_flight"] and r["in_flight"] <= 16, seen
    # paced: never ahead of the schedule; behind it (operations skipped, or the run's end reached
    # late) only for as long as the client or the server waited for a CPU, give or take a round
    assert r["started"] + r["skipped"] <= 401, seen
    assert 400 - r["started"] <= 400 * waited + 16, (seen, waited)
    assert r["done"] <= after[served] - before[served] <= r["started"], (seen, before, after)
    if kind == "conn":
        assert after["tcp_accepted"] - before["tcp_accepted"] >= r["done"]
    if kind == "https":  # kept alive: at most one handshake per slot
        assert 1 <= after["tls_handshakes"] - before["tls_handshakes"] <= 16
    assert r["hist"].sum() == r["done"] and 0 < r["latency_sum_s"] < r["done"]


def test_unpaced_with_two_threads(server):
    r = drive("http", "127.0.0.1", server.ports["http"], 0, 0.5, slots=8, threads=2)
    assert r.errors == 0 and r.rate > 1000
    assert 0 < r.latency_p50_s <= r.latency_p99_s < 1.0 and r.latency_mean_s > 0


def test_errors_are_counted_not_raised():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_client("http", "127.0.0.1", port, 2, 100, 0.3)
    assert r["done"] == 0 and r["errors"] > 0 and r["first_error"] == "Connection refused"
    with pytest.raises(ValueError, match="IPv4"):
        run_client("http", "localhost", port, 2, 100, 0.3)

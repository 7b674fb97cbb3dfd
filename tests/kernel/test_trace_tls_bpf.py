"""ebpf-trace's TLS spans on the real kernel: trace.bpf.o plus tls.bpf.o
loaded with trace_spans on its maps (TracePlugin), uprobes on the real
libssl; a real nginx serving HTTPS on loopback and curl -k as its client,
both traced (nginx by a name of its own, curl by this test's environment
variable, so other engineers' processes are not). Every request gives an
entry span at nginx and an exit span at curl with the right route and
status, carrying the same sequence numbers (the linker joins them), and
the ciphertext on the same sockets gives no span. HTTP/2 inside TLS:
nginx with `listen ... ssl http2` and two OpenSSL clients negotiating h2
by ALPN: curl --http2 (libcurl + nghttp2), requests one after the other on
one connection, and Python's ssl with a hand-written HTTP/2 client sending
them all at once (streams interleave); the kernel flags the plaintext
connection h2 at the preface and sends every SSL call, ext/h2trace.pyx
follows it under the TLS-tagged key: a span per stream at each end with
route and status, both carrying the same sequence numbers."""
import logging
import os
import subprocess
import sys
import time
import types

import pytest

from support.tls_nginx import ROUTES, TlsNginx
from support.trace_apps import spans_until, start_after

pytestmark = [pytest.mark.kernel,
              pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast", "libssl")]

MARK = "DKEBPF_TRACE_TLS_TEST_%d" % os.getpid()
NGINX_NAME = "tlsngx%d" % (os.getpid() % 1000000)  # its comm: at most 15 characters

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

def assert_ends_join(client, server):
    """Both ends' rows, paired in order, carry the same numbers, exactly:
    also where nginx (OpenSSL's read_ahead) took a request's record from
    the socket in one read with the records the client sent after it (the
    kernel names each read by its own record: bpf/tls.bpf.c, tls_recs)."""
    assert len(client) == len(server)
    for c, s in zip(client, server):
        assert (c["req_seq"], c["resp_seq"]) == (s["req_seq"], s["resp_seq"]), (c, s)


# The h2 client scripts' common start: a TLS connection to nginx that ALPN
# made h2, and their request (HPACK: static table entries and literals
# without indexing, no Huffman; nginx's responses are not decoded: the spans
# tell their status). argv: host port traceparent <arg> path...
H2_CLIENT_START = r"""
import socket, ssl, sys
from dkebpf._http2 import frame
host, port, tp, arg, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4], sys.argv[5:]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="localhost")
if s.selected_alpn_protocol() != "h2":
    sys.exit("ALPN did not choose h2: %r" % s.selected_alpn_protocol())


def lit(name, value):  # a new name, or a static table index
    if isinstance(name, int):
        return bytes([name]) + bytes([len(value)]) + value
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def request(sid, p):
    # :method GET, :scheme https (static 2, 7), :authority, :path (names 1, 4)
    block = b"\x82\x87" + lit(1, b"localhost") + lit(4, p.encode()) + lit(b"traceparent", tp)
    return frame(1, 0x5, sid, block)


buf = b""
bulk = False  # reads: True 64 kB SSL_reads, else a frame header's 9 bytes, then its body


def fill(n):
    global buf
    while len(buf) < n:
        got = s.recv(65536 if bulk else n - len(buf))
        if not got:
            sys.exit("connection closed")
        buf += got


def next_frame():
    global buf
    fill(9)
    n = int.from_bytes(buf[:3], "big")
    fill(9 + n)
    t, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
    body, buf = buf[9:9 + n], buf[9 + n:]
    return t, flags, sid, body


def until_ended(open_):
    # frames until every stream of open_ ended: their ids as they ended
    ended = []
    while open_:
        t, flags, sid, body = next_frame()
        if t in (0, 1) and flags & 1 and sid in open_:
            open_.discard(sid)
            ended.append(sid)
        elif t == 3:
            sys.exit("stream %d reset" % sid)
    return ended


def goodbye(ended):
    # the SETTINGS ACK and GOAWAY at the end
    s.sendall(frame(4, 1, 0, b"") + frame(7, 0, 0, b"\0\0\0\0\0\0\0\0"))
    s.close()
    print(*ended, flush=True)

"""
# <arg> reads; all requests in one SSL_write (streams 1, 3, ...; under the
# 1024 bytes a call's capture holds), two small records after it, then
# reads frames until every stream ended (reads "bulk": 64 kB SSL_reads,
# "frames": a frame header's 9 bytes, then its body: SSL_reads that take a
# record in pieces); prints the ids of the streams that ended.
H2_CLIENT = H2_CLIENT_START + r"""
bulk = arg == "bulk"
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
s.sendall(b"".join(request(1 + 2 * i, p) for i, p in enumerate(paths)))
# two small records right behind the requests' (WINDOW_UPDATEs of the
# connection): nginx's read_ahead takes them in the same socket read
for _ in range(2):
    s.sendall(frame(8, 0, 0, (1 << 16).to_bytes(4, "big")))
goodbye(until_ended(set(range(1, 2 * len(paths), 2))))
"""


def make_cfg(**over):
    cfg = dict(ipv6_disabled=False, host_proc="/proc", trace_name_list=(NGINX_NAME,), trace_env_list=(MARK,),
               trace_name_blacklist=(), trace_env_blacklist=(), trace_protos=(), trace_protos_blacklist=(),
               conv_to_ddtrace=False, trace_server=None, datakit_apiserver=None, spool_dir=None, hostname="h",
               tags={})
    cfg.update(over)
    return types.SimpleNamespace(**cfg)


@pytest.fixture
def plugin(bpf_ok):
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.trace import TracePlugin

    p = TracePlugin(PluginContext(cfg=make_cfg(), logger=logging.getLogger("test"), self_pid=os.getpid()))
    p.start()
    yield p
    p.stop()


@pytest.fixture
def nginx(request, tmp_path, plugin):
    # started after the collector: it sees the master at its rescan, the
    # worker (forked) inherits its trace_pids entry
    plugin.rescan(force=True)
    s = TlsNginx(tmp_path, name=NGINX_NAME, http2=getattr(request, "param", False))
    s.start()
    yield s
    s.stop()


def test_https_client_and_server_spans_linked(plugin, nginx):
    assert plugin.tls is not None and plugin.tls.libraries, "no TLS uprobes attached"
    paths = list(ROUTES)
    args = ["curl", "-k", "-s", "--http1.1", "-H",
            f"traceparent: {TRACEPARENT}"]
    for p in paths:
        args += ["-o", "/dev/null", nginx.url(p)]
    # through a waiting shell: the collector learns of curl by its variable
    curl = start_after(2.5, args, dict(os.environ, **{MARK: "1"}), stderr=subprocess.PIPE)
    curl_pid, worker = str(curl.pid), str(nginx.worker)

    def done(rows):
        return (sum(r["pid"] == curl_pid for r in rows) >= len(paths)
                and sum(r["pid"] == worker for r in rows) >= len(paths))

    rows = spans_until(plugin, done, timeout=20)
    assert curl.wait(10) == 0, curl.stderr.read()
    server = sorted((r for r in rows if r["pid"] == worker), key=lambda r: r["ktime"])
    client = sorted((r for r in rows if r["pid"] == curl_pid), key=lambda r: r["ktime"])
    want_status = [str(ROUTES[p][0]) for p in paths]
    assert [r["http_route"] for r in server] == paths
    assert [r["http_route"] for r in client] == paths
    assert [r["http_status_code"] for r in server] == want_status
    assert [r["http_status_code"] for r in client] == want_status
    assert {(r["direction"], r["ebpf_span_type"], r["src_port"]) for r in server} == \
        {("incoming", "entry", str(nginx.port))}
    assert {(r["direction"], r["ebpf_span_type"], r["dst_port"]) for r in client} == \
        {("outgoing", "exit", str(nginx.port))}
    assert all(r["app_trace_id"] == "0af7651916cd43dd8448eb211c80319c" for r in server + client)
    # both ends of each exchange carry the same sequence numbers (of the
    # TLS records that started the request and the response)
    assert_ends_join(client, server)
    assert len({r["req_seq"] for r in server}) == len(paths)
    c = plugin.counters()
    assert c["kernel_drop_trace_tls_span_ring_full"] == 0
    assert c["kernel_drop_trace_events_ring_full"] == 0
    assert c["trace_tls_uprobes_attached"] > 0


def test_ciphertext_of_tls_sockets_is_ignored(plugin, nginx):
    """The TLS socket's own calls (bpf/trace.bpf.c) are flagged ignored at
    the first SSL call: the records of the socket's ciphertext stop, the
    plaintext's go on under the tagged key."""
    from dkebpf import _records

    tag = _records.TLS_SOCKET_TAG
    curl = start_after(2.5, ["curl", "-k", "-s", "--http1.1", "-o", "/dev/null", nginx.url("/tls/ok"),
                             "-o", "/dev/null", nginx.url("/tls/created")], dict(os.environ, **{MARK: "1"}))
    end = time.monotonic() + 15
    while curl.poll() is None and time.monotonic() < end:
        plugin.rescan()  # (the collector's loop does it): curl is found as the shell waits
        time.sleep(0.1)
    assert curl.wait(1) == 0
    time.sleep(1.0)
    msgs = plugin.ring.take()
    mine = msgs[msgs["pid"] == curl.pid]
    tagged = mine[(mine["sk"] & tag) == tag]
    plain = mine[(mine["sk"] & tag) == 0]
    # the plaintext: two requests and two responses
    assert sorted(tagged["op"].tolist()) == [1, 1, 2, 2]
    assert all(m["payload"].tobytes()[:4] in (b"GET ", b"HTTP") for m in tagged)
    # the ciphertext: the handshake only (ClientHello, the server's
    # flights), never the records of the requests
    assert len(plain) <= 4
    assert all(m["payload"].tobytes()[:1] in (b"\x16", b"\x14") for m in plain if m["cap_len"])


def _rows_of_both(plugin, nginx, proc, paths):
    """Once proc (the client) and nginx's worker have a span per path each
    and proc ended: (all rows, the client's, the server's, proc's output),
    each end's a span per path by route and req_seq (so the ends' rows pair
    up)."""
    pid, worker = str(proc.pid), str(nginx.worker)

    def done(rows):
        return (sum(r["pid"] == pid for r in rows) >= len(paths)
                and sum(r["pid"] == worker for r in rows) >= len(paths))

    rows = spans_until(plugin, done, timeout=25)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    key = lambda r: (r["http_route"], int(r["req_seq"]))  # noqa: E731
    client = sorted((r for r in rows if r["pid"] == pid), key=key)
    server = sorted((r for r in rows if r["pid"] == worker), key=key)
    assert [r["http_route"] for r in client] == sorted(paths), rows
    assert [r["http_route"] for r in server] == sorted(paths), rows
    return rows, client, server, out


def _both_ends(plugin, nginx, proc, paths):
    """_rows_of_both's client and server rows, with what both ends share
    checked."""
    rows, client, server, out = _rows_of_both(plugin, nginx, proc, paths)
    paths = sorted(paths)
    want = [str(ROUTES[p][0]) for p in paths]
    for end in (client, server):
        assert [r["http_status_code"] for r in end] == want
        assert [r["resource"] for r in end] == [f"GET {p}" for p in paths]
        assert {(r["operation"], r["http_version"], r["http_method"]) for r in end} == {("HTTP2", "2", "GET")}
        assert all(r["app_trace_id"] == "0af7651916cd43dd8448eb211c80319c" for r in end)
    assert {(r["direction"], r["ebpf_span_type"], r["src_port"]) for r in server} == \
        {("incoming", "entry", str(nginx.port))}
    assert {(r["direction"], r["ebpf_span_type"], r["dst_port"]) for r in client} == \
        {("outgoing", "exit", str(nginx.port))}
    # one connection: the client's port is the same for every stream
    assert len({r["src_port"] for r in client}) == 1 and len({r["dst_port"] for r in server}) == 1
    # the ends joined: each stream's HEADERS frames carry the same sequence
    # numbers at both ends (the TLS record's end + the frame's offset in it)
    assert_ends_join(client, server)
    assert len({r["req_seq"] for r in server}) == len(paths)
    c = plugin.counters()
    assert c["trace_h2_connections"] >= 2  # the plaintext of the one connection, at each end
    assert c["trace_h2_boundary_lost"] == 0 and c["trace_h2_header_errors"] == 0
    assert c["kernel_drop_trace_tls_span_ring_full"] == 0
    assert c["kernel_drop_trace_events_ring_full"] == 0
    return client, server, out


@pytest.mark.parametrize("nginx", [True], indirect=True)  # listen ... ssl http2
def test_curl_http2_over_tls_spans_at_both_ends(plugin, nginx):
    features = subprocess.run(["curl", "-V"], capture_output=True, text=True, check=True).stdout
    assert "HTTP2" in features and "OpenSSL" in features, features
    assert plugin.tls is not None and plugin.tls.libraries, "no TLS uprobes attached"
    paths = list(ROUTES) + ["/tls/ok"]
    args = ["curl", "-k", "-s", "--http2", "-H", f"traceparent: {TRACEPARENT}", "-w", "%{http_version}\\n"]
    for p in paths:
        args += ["-o", "/dev/null", nginx.url(p)]
    # through a waiting shell: the collector learns of curl by its variable
    curl = start_after(2.5, args, dict(os.environ, **{MARK: "1"}), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    client, server, out = _both_ends(plugin, nginx, curl, paths)
    assert out.split() == ["2"] * len(paths)  # curl spoke HTTP/2 each time
    # one after the other: a request's span starts after the one before ended
    assert len({r["ktime"] for r in client}) == len(paths)


@pytest.mark.parametrize("nginx", [True], indirect=True)
@pytest.mark.parametrize("reads", ["bulk", "frames"])
def test_python_ssl_h2_client_concurrent_streams(plugin, nginx, reads):
    """Python's ssl (libssl's SSL_write_ex/SSL_read_ex): all requests in one
    SSL_write, responses interleaved by nginx; read in bulk, or a frame at
    a time (records taken in pieces: the kernel adds what the earlier
    pieces returned, bpf/tls.bpf.c's tls_recs.taken, or the numbers would
    not join)."""
    assert plugin.tls is not None and plugin.tls.libraries, "no TLS uprobes attached"
    paths = list(ROUTES) * 2
    args = [sys.executable, "-c", H2_CLIENT, nginx.host, str(nginx.port), TRACEPARENT, reads, *paths]
    proc = start_after(2.5, args, dict(os.environ, **{MARK: "1"}), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    client, server, out = _both_ends(plugin, nginx, proc, paths)
    assert sorted(int(sid) for sid in out.split()) == list(range(1, 2 * len(paths), 2))
    # the requests left in one SSL_write: every stream's HEADERS in one TLS record
    assert len({r["ktime"] for r in client}) == 1


# <arg> first_path: one connection, frames
# read one at a time; first_path twice: stream 1 to its end, then stream
# 3 to its response's HEADERS frame (the DATA after it, in the same TLS
# record from nginx, stays in OpenSSL's buffer: a record begun before the
# collector; nginx writes a connection's first response in two records);
# prints "ready" and waits for a line on stdin (the collector started
# meanwhile); then the other requests in one SSL_write (streams 5, 7,
# ...), until all ended; prints the ids of the streams that ended.
H2_MID_CLIENT = H2_CLIENT_START + r"""
first = arg
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + request(1, first))
until_ended({1})
s.sendall(request(3, first))
while True:
    t, flags, sid, body = next_frame()
    if t == 1 and sid == 3:
        break
print("ready", flush=True)
sys.stdin.readline()
s.sendall(b"".join(request(5 + 2 * i, p) for i, p in enumerate(paths)))
goodbye(until_ended(set(range(5, 5 + 2 * len(paths), 2))))
"""


def test_h2_over_tls_connection_older_than_the_collector(tmp_path, bpf_ok):
    """An HTTP/2-over-TLS connection opened and used before the collector
    started (no handshake, no preface seen): both ends' kernel programs flag
    its plaintext h2 at a message start that is whole frames (the rule of
    trace.bpf.c's h2c, include/trace_span.bpf.h), ext/h2trace.pyx follows it
    mid-stream: a span per later stream at each end with route and status,
    the earlier requests none. The client's first reads after the start
    take the rest of a record begun before it: their sequence number is not
    known (span_msg.seq_unknown, never a guess); the later streams' numbers
    are, and the ends join."""
    import numpy as np

    from dkebpf import _records
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.trace import TracePlugin

    tag_bit = _records.TLS_SOCKET_TAG
    nginx = TlsNginx(tmp_path, name=NGINX_NAME, http2=True)
    nginx.start()
    proc = plugin = None
    try:
        first, paths = "/tls/ok", ["/tls/created", "/tls/missing", "/tls/broken"]
        proc = subprocess.Popen([sys.executable, "-c", H2_MID_CLIENT, nginx.host, str(nginx.port), TRACEPARENT,
                                 first, *paths], env=dict(os.environ, **{MARK: "1"}), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        plugin = TracePlugin(PluginContext(cfg=make_cfg(), logger=logging.getLogger("test"), self_pid=os.getpid()))
        plugin.start()
        plugin.rescan(force=True)
        assert plugin.tls is not None and plugin.tls.libraries, "no TLS uprobes attached"
        # the records of each step (TLS plaintext of the two processes), to
        # see what the kernel said of their sequence numbers
        seen = []
        step = plugin.builder.step_staged

        def watch(now):
            msgs, spans = step(now)
            mine = msgs[((msgs["sk"] & tag_bit) == tag_bit) & np.isin(msgs["pid"], [proc.pid, nginx.worker])]
            seen.extend(zip(mine["pid"].tolist(), mine["op"].tolist(), mine["ts"].tolist(),
                            mine["seq"].tolist(), mine["seq_unknown"].tolist()))
            return msgs, spans

        plugin.builder.step_staged = watch
        proc.stdin.write("go\n")
        proc.stdin.flush()
        rows, client, server, out = _rows_of_both(plugin, nginx, proc, paths)
        assert sorted(int(x) for x in out.split()) == [5, 7, 9]
        # the earlier requests (streams 1 and 3, before the collector): no span
        assert not [r for r in rows if r["http_route"] == first], rows
        want = sorted(paths)
        for end in (client, server):
            assert [r["http_status_code"] for r in end] == [str(ROUTES[p][0]) for p in want]
            assert {(r["operation"], r["http_version"], r["http_method"]) for r in end} == {("HTTP2", "2", "GET")}
            assert all(r["app_trace_id"] == "0af7651916cd43dd8448eb211c80319c" for r in end)
        assert {r["direction"] for r in client} == {"outgoing"} and {r["direction"] for r in server} == {"incoming"}
        # no wrong number: the ends join, each stream's numbers its own
        assert_ends_join(client, server)
        assert all(r["req_seq"] != 0 and r["resp_seq"] != 0 for r in client)
        assert len({r["req_seq"] for r in client}) == len(paths)
        # the client's first read after the start (the DATA left in
        # OpenSSL's buffer, of a record begun before): number unknown, sent
        # as such; its reads from the socket after it known again
        seen = sorted(set(seen), key=lambda r: r[2])  # (a record carried to a later step comes again)
        reads = [unknown for p_, op, _ts, _seq, unknown in seen if p_ == proc.pid and op == 2]
        assert reads[:2] == [1, 1] and 0 in reads, seen  # the DATA's header and body; then known
        assert all(seq == 0 for _p, _o, _t, seq, unknown in seen if unknown)
        assert not any(unknown for p_, *_r, unknown in seen if p_ == nginx.worker)  # it read from the socket
        c = plugin.counters()
        # followed mid-stream at each end, not from a preface
        assert c["trace_h2_connections_midstream"] == 2 and c["trace_h2_connections"] == 0, c
        assert c["trace_h2_header_errors"] == 0
        assert c["kernel_drop_trace_tls_span_ring_full"] == 0
        assert c["kernel_drop_trace_events_ring_full"] == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if plugin is not None:
            plugin.stop()
        nginx.stop()

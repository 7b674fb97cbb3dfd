"""ebpf-trace's HTTP/2 streams over the real trace.bpf.o: a real grpcio
server (a generic handler: no generated code) and a grpcio client on one
channel (one connection), both traced: unary calls one after another and
several at once (concurrent streams interleaved on the connection), one
failing with a status. One span per call at each end with the method's
path and gRPC status; the two ends meet on the sequence numbers of the
HEADERS frames."""
import logging
import os
import subprocess
import sys
import time

import pytest

from support.trace_apps import start_after, stop_process
from kernel.test_trace_bpf import MARK, make_cfg, spans_until

pytestmark = [pytest.mark.kernel, pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast")]

SERVER = r"""
import sys, time
from concurrent import futures
import grpc

def say(req, ctx):
    if req == b"fail":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    time.sleep(0.2 if req.startswith(b"c") else 0)  # the concurrent calls overlap on the connection
    return b"ok:" + req

handler = grpc.method_handlers_generic_handler("test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
server = grpc.server(futures.ThreadPoolExecutor(8))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
"""

CLIENT = r"""
import sys
from concurrent import futures
import grpc

with grpc.insecure_channel("127.0.0.1:" + sys.argv[1]) as ch:
    say = ch.unary_unary("/test.Echo/Say")
    assert say(b"a") == b"ok:a"
    assert say(b"b") == b"ok:b"
    try:
        say(b"fail")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
    calls = [say.future(b"c%d" % i) for i in range(4)]
    assert sorted(c.result() for c in calls) == [b"ok:c%d" % i for i in range(4)]
"""


def test_grpc_unary_and_concurrent_calls_both_ends(bpf_ok):
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.trace import TracePlugin

    env = dict(os.environ, **{MARK: "1"})
    server = subprocess.Popen([sys.executable, "-c", SERVER], env=env, stdout=subprocess.PIPE, text=True)
    p = TracePlugin(PluginContext(cfg=make_cfg(), logger=logging.getLogger("test"), self_pid=os.getpid()))
    client = None
    try:
        port = server.stdout.readline().strip()
        assert port.isdigit(), "the gRPC server did not start"
        p.start()
        client = start_after(1.5, [sys.executable, "-c", CLIENT, port], env)

        def done(rows):
            return sum(r.get("operation") == "gRPC" for r in rows) >= 14

        rows = spans_until(p, done, timeout=30)
        assert client.wait(30) == 0
    finally:
        p.stop()
        stop_process(client, 5)
        stop_process(server, 5)
    rows = [r for r in rows if r.get("operation") == "gRPC"]
    at_client = sorted((r for r in rows if r["pid"] == str(client.pid)), key=lambda r: r["req_seq"])
    at_server = sorted((r for r in rows if r["pid"] == str(server.pid)), key=lambda r: r["req_seq"])
    assert len(at_client) == 7 and len(at_server) == 7
    for side, direction in ((at_client, "outgoing"), (at_server, "incoming")):
        assert {r["direction"] for r in side} == {direction}
        assert {(r["resource"], r["http_method"], r["http_version"]) for r in side} == {("/test.Echo/Say", "POST", "2")}
        assert sorted(r["grpc_status_code"] for r in side) == ["0"] * 6 + ["5"]
        failed = [r for r in side if r["grpc_status_code"] == "5"]
        assert failed[0]["grpc_message"] == "no such thing" and failed[0]["status"] == "error"
        assert all(r["status"] == "ok" for r in side if r["grpc_status_code"] == "0")
        assert all(r["http_status_code"] == "200" and r["duration"] >= 0 for r in side)
    # the same HEADERS frames seen from both ends: the linker joins them on these
    assert [(r["req_seq"], r["resp_seq"]) for r in at_client] == [(r["req_seq"], r["resp_seq"]) for r in at_server]
    # the four concurrent calls were in flight together on the connection
    conc = sorted(at_server, key=lambda r: r["start"])[3:]
    assert max(r["start"] for r in conc) < min(r["start"] + r["duration"] for r in conc)
    assert len({r["src_port"] for r in at_client}) == 1  # one connection


# An HTTP/2 client writing its preface, SETTINGS and a request's HEADERS
# as 7 iovecs of one sendmsg (the HEADERS frame's header and block in the
# 5th to 7th: past the 4 the kernel copies unrolled, reached by its
# bpf_loop), and a server answering :status 200; one process, both ends.
RAW_H2 = r"""
import socket, time
from dkebpf._http2 import frame

preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
block = b"\x83\x86" + b"\x04\x0e/iov/past-four"  # :method POST, :scheme http, :path literal (indexed name)
req = frame(1, 0x5, 1, block)
resp = frame(4, 0, 0, b"") + frame(1, 0x5, 1, b"\x88")
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
cli = socket.create_connection(srv.getsockname())
conn, _ = srv.accept()
parts = [preface[:8], preface[8:16], preface[16:], frame(4, 0, 0, b""), req[:9], req[9:12], req[12:]]
assert cli.sendmsg(parts) == sum(map(len, parts))
got = b""
while len(got) < sum(map(len, parts)):
    got += conn.recv(4096)
conn.sendall(resp)
back = b""
while len(back) < len(resp):
    back += cli.recv(4096)
time.sleep(1.5)
"""


def test_http2_request_in_iovecs_past_the_fourth(bpf_ok):
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.trace import TracePlugin

    p = TracePlugin(PluginContext(cfg=make_cfg(), logger=logging.getLogger("test"), self_pid=os.getpid()))
    p.start()
    proc = None
    try:
        proc = start_after(1.5, [sys.executable, "-c", RAW_H2], dict(os.environ, **{MARK: "1"}))
        rows = spans_until(p, lambda rows: sum(r.get("operation") == "HTTP2" for r in rows) >= 2, timeout=20)
        assert proc.wait(20) == 0
    finally:
        p.stop()
        stop_process(proc, 5)
    rows = [r for r in rows if r["pid"] == str(proc.pid) and r.get("operation") == "HTTP2"]
    assert sorted((r["direction"], r["resource"], r["http_status_code"], r["status"]) for r in rows) == [
        ("incoming", "POST /iov/past-four", "200", "ok"), ("outgoing", "POST /iov/past-four", "200", "ok")]
    assert rows[0]["req_seq"] == rows[1]["req_seq"] and rows[0]["resp_seq"] == rows[1]["resp_seq"]


# A grpcio client whose channel (one connection) made a call before the
# collector started, then, told to go on, more calls on that connection:
# one to the method called before (its :path now in both ends' dynamic
# tables: referred to by index) and two to a method new to the connection
# (its :path a literal the first time, then indexed by an entry the
# collector saw added).
CLIENT_BEFORE = r"""
import sys
import grpc

with grpc.insecure_channel("127.0.0.1:" + sys.argv[1]) as ch:
    say = ch.unary_unary("/test.Echo/Say")
    later = ch.unary_unary("/test.Echo/Later")
    assert say(b"a") == b"ok:a"
    print("ready", flush=True)
    sys.stdin.readline()
    assert say(b"b") == b"ok:b"
    assert later(b"x") == b"ok:x"
    assert later(b"y") == b"ok:y"
"""


def test_grpc_connection_opened_before_the_collector(bpf_ok):
    """Seen mid-stream (no preface): the kernel flags it at its first
    call, whole frames; spans at both ends for the calls after the start,
    with what the header blocks allow: the new method's path (literal, then
    an entry seen added); the old method's path (an entry added before)
    absent, never another (so are content-type and grpc-status, referred
    to by index: not told as gRPC); counted as a mid-stream connection."""
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.trace import TracePlugin

    env = dict(os.environ, **{MARK: "1"})
    both = SERVER.replace('{"Say": ', '{"Later": grpc.unary_unary_rpc_method_handler(say), "Say": ')
    server = subprocess.Popen([sys.executable, "-c", both], env=env, stdout=subprocess.PIPE, text=True)
    client = None
    p = TracePlugin(PluginContext(cfg=make_cfg(), logger=logging.getLogger("test"), self_pid=os.getpid()))
    try:
        port = server.stdout.readline().strip()
        assert port.isdigit(), "the gRPC server did not start"
        client = subprocess.Popen([sys.executable, "-c", CLIENT_BEFORE, port], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "ready", "the gRPC client's first call failed"
        p.start()
        time.sleep(1.5)
        client.stdin.write("go\n")
        client.stdin.flush()

        def done(rows):
            return sum(r.get("operation") in ("gRPC", "HTTP2") for r in rows) >= 6

        rows = spans_until(p, done, timeout=30)
        assert client.wait(30) == 0
        midstream = p.builder.stats["h2_connections_midstream"]
    finally:
        p.stop()
        stop_process(client, 5)
        stop_process(server, 5)
    # (content-type, an entry added before: unknown, so gRPC is not told from HTTP/2)
    rows = [r for r in rows if r.get("operation") in ("gRPC", "HTTP2")]
    at_client = sorted((r for r in rows if r["pid"] == str(client.pid)), key=lambda r: r["req_seq"])
    at_server = sorted((r for r in rows if r["pid"] == str(server.pid)), key=lambda r: r["req_seq"])
    assert len(at_client) == 3 and len(at_server) == 3
    for side, direction in ((at_client, "outgoing"), (at_server, "incoming")):
        assert {r["direction"] for r in side} == {direction}
        assert [r.get("http_route") for r in side] == [None, "/test.Echo/Later", "/test.Echo/Later"]
        assert all(r.get("http_method") in (None, "POST") for r in side)
        assert all(r.get("grpc_status_code") in (None, "0") for r in side)
    assert [(r["req_seq"], r["resp_seq"]) for r in at_client] == [(r["req_seq"], r["resp_seq"]) for r in at_server]
    assert midstream == 2  # the connection at each end

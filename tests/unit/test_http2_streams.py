"""dkebpf._h2trace.H2Tracker against tests/reference/h2trace_ref.py: the
calls of HTTP/2 connections (as bpf/trace.bpf.c sends them) -> one span per
stream: interleaved streams, CONTINUATION, padding, RST_STREAM, gRPC
trailers, frames cut between calls and by the capture, and random
exchanges cut at random call boundaries (hypothesis)."""
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _h2trace, _trace
from reference import h2trace_ref as ref
from reference import hpack_ref

SEND, RECV, CLOSE = 1, 2, 3
SK = 0xFFFF888812340000


def frame(t, flags, stream, body):
    return struct.pack(">I", len(body))[1:] + bytes([t, flags]) + struct.pack(">I", stream) + body


def lit(name, value, index=False):  # literal, new name, Huffman strings; with incremental indexing
    return (b"\x40" if index else b"\x00") + hpack_ref.encode_str(name, True) + hpack_ref.encode_str(value, True)


def request(path, extra=b""):
    # :method POST (static 3), :scheme http (6); :path and content-type indexed into the table
    return b"\x83\x86" + lit(b":path", path, True) + lit(b"content-type", b"application/grpc", True) + extra


def trailers(code, msg=b""):
    return lit(b"grpc-status", str(code).encode()) + (lit(b"grpc-message", msg) if msg else b"")


class Conn:
    """Calls of one connection at one end: each direction's bytes counted
    (seq) and captured (the first 1024 bytes of a call)."""

    def __init__(self, sk=SK, client=True):
        self.sk, self.client, self.recs, self.t = sk, client, [], 1000
        self.seq = {SEND: 1000, RECV: 5000000}
        self.last_op = 0

    def call(self, op_req, data):
        """A call in the request direction (op_req True) or the response's."""
        op = (SEND if op_req else RECV) if self.client else (RECV if op_req else SEND)
        self.t += 10
        more = 0 if op != self.last_op else 2
        self.last_op = op
        self.recs.append(dict(sk=self.sk, op=op, ts=self.t, seq=self.seq[op], bytes=len(data),
                              payload=data[:ref.PAYLOAD_MAX], more=more))
        self.seq[op] = (self.seq[op] + len(data)) & 0xFFFFFFFF

    def close(self):
        self.t += 10
        self.recs.append(dict(sk=self.sk, op=CLOSE, ts=self.t, seq=0, bytes=0, payload=b"", more=0))


def records(recs):
    m = np.zeros(len(recs), _trace.MSG_DTYPE)
    for i, r in enumerate(recs):
        for k in ("sk", "op", "ts", "seq", "bytes", "more"):
            m[k][i] = r[k]
        m["cap_len"][i] = len(r["payload"])
        m["tid"][i] = 7
        m["payload"][i] = r["payload"].ljust(ref.PAYLOAD_MAX, b"\0")
    return m


FIELDS = ("sk", "id", "start_ns", "resp_ns", "end_ns", "req_bytes", "resp_bytes", "req_seq", "resp_seq", "status",
          "grpc_status", "reset", "have_resp", "incoming", "trace_hi", "trace_lo", "parent", "sampled", "source")
STRS = ("method", "path", "ctype", "gmsg")


def run(recs, steps=1):
    """Both implementations over the records (in `steps` batches for the
    C one); the spans (sorted) and the request records' until."""
    tr = _h2trace.H2Tracker()
    got, until_c = [], {}
    cuts = np.linspace(0, len(recs), steps + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):
        m = records(recs[a:b])
        role = np.zeros(len(m), np.uint8)
        until = np.zeros(len(m), np.uint64)
        tr.feed(m, np.arange(len(m)), role, until, _trace.ROLE_REQUEST)
        until_c.update({int(a + i): int(until[i]) for i in np.flatnonzero(role == _trace.ROLE_REQUEST)})
        for s in tr.spans(m):
            row = {f: int(s[f]) for f in FIELDS}
            for f in STRS:
                n = int(s[f + "_len"])
                row[f] = None if n == 0xFF else bytes(s[f])[:n]
            got.append(row)
    r = ref.Tracker()
    r.feed(recs)
    want = [{**{f: s[f] for f in FIELDS}, **{f: s[f] for f in STRS}} for s in r.spans()]
    key = lambda s: (s["sk"], s["id"], s["end_ns"])  # noqa: E731
    got.sort(key=key)
    want.sort(key=key)
    if steps == 1:
        assert until_c == r.requests
        assert tr.stats["h2_streams"] == len(got) + tr.open_streams + tr.stats["h2_unanswered"]
    assert got == want
    return got


def test_interleaved_grpc_streams_trailers_and_reset():
    c = Conn()
    c.call(True, ref.PREFACE + frame(4, 0, 0, b"") + frame(1, 0x4, 1, request(b"/pkg.Svc/A"))
           + frame(1, 0x4, 3, request(b"/pkg.Svc/B")))  # B's fields are indexed: the table matters
    c.call(True, frame(0, 0x1, 1, b"\0\0\0\0\x01a") + frame(0, 0x1, 3, b"\0\0\0\0\x01b"))
    c.call(True, frame(1, 0x4 | 0x1, 5, b"\x83\x86\xbe\xbf"))  # C: :path, content-type from the table
    c.call(False, frame(4, 0, 0, b"") + frame(1, 0x4, 3, b"\x88") + frame(1, 0x4, 1, b"\x88"))
    c.call(False, frame(0, 0, 3, b"\0\0\0\0\x01B") + frame(1, 0x5, 3, trailers(5, b"no such thing"))
           + frame(0, 0, 1, b"\0\0\0\0\x01A") + frame(1, 0x5, 1, trailers(0)))
    c.call(False, frame(3, 0, 5, b"\0\0\0\x08"))
    got = run(c.recs)
    assert [(s["id"], s["path"], s["status"], s["grpc_status"], s["gmsg"], s["reset"]) for s in got] == [
        (1, b"/pkg.Svc/A", 200, 0, None, 0), (3, b"/pkg.Svc/B", 200, 5, b"no such thing", 0),
        (5, b"/pkg.Svc/B", 0, -1, None, 1)]
    assert got[0]["method"] == b"POST" and got[0]["ctype"] == b"application/grpc" and got[0]["incoming"] == 0
    # the HEADERS frames' sequence numbers: after the preface and SETTINGS, then after A's
    assert [s["req_seq"] for s in got[:2]] == [1000 + 24 + 9, 1000 + 24 + 9 + 9 + len(request(b"/pkg.Svc/A"))]


def test_continuation_padding_priority_and_server_side():
    c = Conn(client=False)
    block = request(b"/x/continued", lit(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
    part1, part2, part3 = block[:7], block[7:20], block[20:]
    headers = frame(1, 0x8 | 0x20, 1, bytes([3]) + b"\0\0\0\0\x10" + part1 + b"pad")
    c.call(True, ref.PREFACE + headers + frame(9, 0, 1, part2) + frame(9, 0x4 | 0x1, 1, part3))
    c.call(False, frame(1, 0x4 | 0x1 | 0x8, 1, bytes([2]) + b"\x89" + b"zz"))  # :status 204, padded
    got = run(c.recs)
    assert [(s["path"], s["status"], s["incoming"]) for s in got] == [(b"/x/continued", 204, 1)]
    assert got[0]["trace_lo"] != 0 and got[0]["source"] != 0


def test_frames_cut_between_calls_and_past_the_capture():
    c = Conn()
    h = frame(1, 0x4 | 0x1, 1, request(b"/split"))
    c.call(True, ref.PREFACE + h[:5])  # a frame header cut between two calls
    c.call(True, h[5:30])              # and its block too
    c.call(True, h[30:])
    big = frame(0, 0, 1, b"x" * 3000)  # one call longer than the capture ...
    c.call(False, frame(1, 0x4, 1, b"\x88") + big + frame(0, 0x1, 1, b""))  # ... with a frame past it
    c.call(True, frame(1, 0x4 | 0x1, 3, request(b"/after")))  # the client's table is intact
    c.call(False, frame(1, 0x4 | 0x1, 3, b"\x88"))
    got = run(c.recs)
    # /split's END_STREAM was past the capture: it stays open; the response
    # direction lost its frame boundary (found again at the next call) and
    # its table is unknown: /after's response headers are not read
    assert [(s["id"], s["path"]) for s in got] == []
    c.close()
    got = run(c.recs)
    assert [(s["id"], s["path"], s["status"]) for s in got] == [(1, b"/split", 200)]


def test_close_ends_answered_streams_and_drops_others_across_steps():
    c = Conn()
    c.call(True, ref.PREFACE + frame(1, 0x4 | 0x1, 1, request(b"/a")) + frame(1, 0x4 | 0x1, 3, request(b"/b")))
    c.call(False, frame(1, 0x4, 1, b"\x88"))
    c.close()
    for steps in (1, 2, 3):
        got = run(c.recs, steps)
        assert [(s["path"], s["end_ns"] == s["resp_ns"]) for s in got] == [(b"/a", True)]


def test_not_from_the_preface_is_not_followed():
    c = Conn()
    c.call(True, frame(1, 0x4 | 0x1, 1, request(b"/x")))
    c.call(False, frame(1, 0x4 | 0x1, 1, b"\x88"))
    assert run(c.recs) == []


def _exchange(paths, statuses, resets):
    """Frames of one connection, each direction a list of frames."""
    req, resp = [frame(4, 0, 0, b"")], [frame(4, 0, 0, b"")]
    for i, (p, s, r) in enumerate(zip(paths, statuses, resets)):
        sid = 2 * i + 1
        req.append(frame(1, 0x4, sid, request(p)))
        req.append(frame(0, 0x1, sid, b"\0\0\0\0\x02hi"))
        if r:
            resp.append(frame(3, 0, sid, b"\0\0\0\x08"))
            continue
        resp.append(frame(1, 0x4, sid, b"\x88"))
        resp.append(frame(0, 0, sid, b"\0\0\0\0\x01" + b"y" * (s % 7)))
        resp.append(frame(1, 0x5, sid, trailers(s, b"m" if s else b"")))
    return req, resp


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40).map(lambda b: b"/" + b.hex().encode()),
                          st.integers(0, 16), st.booleans()), min_size=1, max_size=6),
       st.lists(st.integers(1, 1500), min_size=1, max_size=30), st.integers(1, 4), st.booleans())
def test_agrees_with_reference(calls, cuts, steps, close):
    paths, statuses, resets = zip(*calls)
    req, resp = _exchange(paths, statuses, resets)
    streams = [ref.PREFACE + b"".join(req), b"".join(resp)]
    c = Conn()
    pos, k = [0, 0], 0
    # the two directions' bytes in calls of the drawn sizes, alternating
    while pos[0] < len(streams[0]) or pos[1] < len(streams[1]):
        w = k % 2
        if pos[w] < len(streams[w]):
            n = cuts[k % len(cuts)]
            c.call(w == 0, streams[w][pos[w]:pos[w] + n])
            pos[w] += n
        k += 1
    if close:
        c.close()
    run(c.recs, steps)


def test_span_builder_grpc_entry_parents_a_redis_exit_on_its_thread():
    """SpanBuilder over one step: a gRPC call served by thread 7 (its
    request with a traceparent, trailers with grpc-status 0) while that
    thread calls Redis: the gRPC entry span and the Redis exit span in one
    table, the exit's thread_trace_id the entry's."""
    from dkebpf.plugins.trace import SpanBuilder
    from unit.test_trace_spans import Names, msg, redis_cmd

    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    req = ref.PREFACE + frame(4, 0, 0, b"") + frame(1, 0x4, 1, request(b"/pkg.Svc/Get", lit(b"traceparent", tp)))
    req += frame(0, 0x1, 1, b"\0\0\0\0\x01a")
    resp = frame(1, 0x4, 1, b"\x88") + frame(0, 0, 1, b"\0\0\0\0\x01b") + frame(1, 0x5, 1, trailers(0))
    records = np.concatenate([
        msg(1, RECV, 1000, req, seq=100, tid=7),
        msg(2, SEND, 1100, redis_cmd(b"GET", b"k"), seq=9000, tid=7),
        msg(2, RECV, 1200, b"$1\r\nv\r\n", tid=7, seq=7000),
        msg(1, SEND, 1300, resp, seq=500, tid=9),  # answered from another thread
        msg(2, SEND, 1400, redis_cmd(b"PING"), seq=9020, tid=7, last_recv=1200),
        msg(2, RECV, 1500, b"+PONG\r\n", tid=7, seq=7010),
    ])
    b = SpanBuilder(Names())
    msgs, spans = b.step(records, 100 * 10**9)
    rows = b.table(msgs, spans, 0).to_pylist()
    grpc = [r for r in rows if r["operation"] == "gRPC"]
    redis = sorted((r for r in rows if r["operation"].startswith("Redis")), key=lambda r: r["ktime"])
    assert [(r["resource"], r["grpc_status_code"], r["status"], r["direction"], r["http_version"]) for r in grpc] == [
        ("/pkg.Svc/Get", "0", "ok", "incoming", "2")]
    g = grpc[0]
    assert (g["req_seq"], g["resp_seq"], g["ktime"], g["duration"] * 1000 <= 300) == (133, 500, 1000, True)
    assert g["app_trace_id"] and g["thread_trace_id"] != 0 and g["process_name"] == "srv"
    # GET while the stream was open: its child; PING after the response: not
    assert [r["resource"] for r in redis] == ["GET", "PING"]
    assert redis[0]["thread_trace_id"] == g["thread_trace_id"] != redis[1]["thread_trace_id"]
    assert b.stats["h2_streams"] == 1 and b.stats["spans"] == 2

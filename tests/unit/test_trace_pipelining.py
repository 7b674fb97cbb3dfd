"""ebpf-trace's pipelining split (one span per message of a call that
carried several, for HTTP/1.x and Redis through one path:
ext/trace.pyx split_pipelines with ext/http.pyx message_bounds and
ext/redis.pyx parse) against the plain-Python references
(tests/reference/trace_ref.py, http_ref.py, redis_ref.py) on random
pipelines cut at random points; never a message paired with another's
bytes; and through the SpanBuilder on hand-made records."""
import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkebpf import _http, _redis, _trace
from reference import http_ref, redis_ref, trace_ref
from support.span_records import CLOSE, RECV, SEND, build, msg, redis_cmd

CAP = _trace.PAYLOAD_MAX


# --- generated pipelines ------------------------------------------------------

@st.composite
def http_request(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"DELETE"]))
    path = b"/" + bytes(draw(st.lists(st.sampled_from(list(b"abcz09-_")), max_size=40)))
    hdrs = b"Host: h\r\n" + draw(st.sampled_from([b"", b"Accept: */*\r\n", b"X-Pad: " + b"p" * 300 + b"\r\n"]))
    body = b""
    if method == b"POST":
        body = bytes(draw(st.lists(st.integers(0, 255), max_size=draw(st.sampled_from([8, 600])))))
        hdrs += b"Content-Length: %d\r\n" % len(body)
    return method + b" " + path + b" HTTP/1.1\r\n" + hdrs + b"\r\n" + body


def chunked(body, sizes):
    out, i = b"", 0
    for s in sizes:
        if i >= len(body):
            break
        out += b"%x\r\n" % len(body[i:i + s]) + body[i:i + s] + b"\r\n"
        i += s
    if i < len(body):
        out += b"%X;ext=1\r\n" % (len(body) - i) + body[i:] + b"\r\n"
    return out + b"0\r\n" + draw_trailer(len(body)) + b"\r\n"


def draw_trailer(n):
    return b"X-Trailer: t\r\n" if n % 2 else b""


@st.composite
def http_response(draw):
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    body = bytes(draw(st.lists(st.integers(0, 255), max_size=draw(st.sampled_from([10, 900])))))
    head = b"HTTP/1.1 %d X\r\nServer: s\r\n" % status
    if status in (204, 304):
        return head + draw(st.sampled_from([b"", b"Content-Length: 12\r\n"])) + b"\r\n", status
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 50), max_size=4))
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, sizes), status
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body, status


@st.composite
def redis_pair(draw):
    words = draw(st.lists(st.binary(min_size=1, max_size=draw(st.sampled_from([5, 400]))), min_size=1, max_size=3))
    reply = draw(st.sampled_from([b"+OK\r\n", b"-ERR no\r\n", b":12\r\n", b"$-1\r\n",
                                  b"$5\r\nhello\r\n", b"*2\r\n$1\r\na\r\n:3\r\n"]))
    return redis_cmd(*words), reply


@st.composite
def pipeline(draw, kind):
    """(requests, responses, requests' captured bytes, responses' captured
    bytes): 1-6 exchanges; each run's capture ends at a random point (its
    first call's end) and at CAP at most."""
    n = draw(st.integers(1, 6))
    if kind == "http":
        reqs = [draw(http_request()) for _ in range(n)]
        resps = [draw(http_response())[0] for _ in range(n)]
    else:
        pairs = [draw(redis_pair()) for _ in range(n)]
        reqs, resps = [p[0] for p in pairs], [p[1] for p in pairs]
    q, r = b"".join(reqs), b"".join(resps)
    qcap = min(draw(st.integers(1, len(q))), CAP)
    rcap = min(draw(st.integers(1, len(r))), CAP)
    return reqs, resps, qcap, rcap


def bounds_of(kind, payloads, requests):
    if kind == "http":
        return _http.message_bounds(pa.array(payloads, pa.binary()), np.full(len(payloads), requests))
    return _redis.parse(pa.array(payloads, pa.binary()), np.full(len(payloads), requests))


def ref_bounds(kind, p, requests):
    if kind == "http":
        return [(o, n, v) for o, n, _, v in http_ref.message_bounds(p, requests)]
    rows = redis_ref.parse([p], [requests])
    return list(zip(rows["off"].tolist(), rows["length"].tolist(), rows["valid"].tolist()))


def starts(msgs):
    out, at = [], 0
    for m in msgs:
        out.append(at)
        at += len(m)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["http", "redis"]).flatmap(lambda k: st.tuples(st.just(k), pipeline(k))))
def test_split_matches_reference_and_never_pairs_wrong_bytes(case):
    kind, (reqs, resps, qcap, rcap) = case
    q, r = b"".join(reqs), b"".join(resps)
    qp, rp = q[:qcap], r[:rcap]
    got, stats = _trace.split_pipelines(bounds_of(kind, [qp], True), bounds_of(kind, [rp], False),
                                        [len(q)], [len(r)], [qcap], [rcap])
    want, outcome = trace_ref.split_pipelines(ref_bounds(kind, qp, True), ref_bounds(kind, rp, False),
                                              len(q), len(r), qcap, rcap)
    rows = [{k: (bool(v) if k in ("many", "rest") else int(v)) for k, v in zip(got.dtype.names, row) if k != "span"}
            for row in got.tolist()]
    assert rows == want
    assert stats["pipelined_calls"] == int(outcome in ("split", "rest"))
    assert stats["pipelined_rest_spans"] == int(outcome == "rest")
    assert stats["pipelined_mismatched"] == int(outcome == "mismatched")
    # every row starts at the true first byte of its own request and response
    qs, rs = starts(reqs), starts(resps)
    for row in rows:
        assert row["req_off"] == qs[row["sub"]] and row["resp_off"] == rs[row["sub"]]
        if row["many"] and not row["rest"]:  # one message each: its exact length
            assert (row["req_len"], row["resp_len"]) == (len(reqs[row["sub"]]), len(resps[row["sub"]]))
    # the whole pipeline captured: one row per exchange
    if qcap == len(q) and rcap == len(r) and len(reqs) > 1:
        assert outcome == "split" and len(rows) == len(reqs)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(http_request(), http_response().map(lambda x: x[0]), st.binary(max_size=30)),
                max_size=5), st.integers(0, 2000), st.booleans())
def test_http_message_bounds_match_reference(parts, cut, requests):
    p = b"".join(parts)[:cut]
    rows = _http.message_bounds(pa.array([p], pa.binary()), np.array([requests]))
    assert [(r["off"], r["length"], r["complete"], r["valid"]) for r in rows] == \
        [tuple(x) for x in http_ref.message_bounds(p, requests)]


def test_http_message_length_of_bodies():
    # a chunked body whose end is captured, one past it, a Content-Length past it
    ch = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    rows = _http.message_bounds(pa.array([ch + ch, ch[:-3], b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nab"]),
                                np.zeros(3, bool))
    assert [(r["ev"], r["off"], r["length"], r["complete"]) for r in rows] == \
        [(0, 0, len(ch), 1), (0, len(ch), len(ch), 1), (1, 0, 0, 0), (2, 0, 41 + 5000, 0)]


# --- through the span builder -------------------------------------------------------

def http_resp(status, body):
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body


def test_http_pipeline_one_span_per_request_at_both_ends():
    """Four requests in one write, their responses in one read (the
    client), and the server's side of the same bytes: four spans at each
    end, each with its own method, path, status, bytes and the sequence
    numbers of its own first bytes, equal at both ends."""
    reqs = [b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz",
            b"GET /c?q=1 HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
            b"DELETE /d HTTP/1.1\r\n\r\n"]
    resps = [http_resp(200, b"aa"), http_resp(201, b""), http_resp(404, b"nope"), http_resp(500, b"x" * 10)]
    q, r = b"".join(reqs), b"".join(resps)
    client = [msg(1, SEND, 100, q, seq=1000, tid=3),
              msg(1, RECV, 200, r, sent=len(q), last_send=100, seq=7000, tid=3),
              msg(1, CLOSE, 300, sent=len(q), recv=len(r), last_send=100, last_recv=200)]
    server = [msg(2, RECV, 110, q, seq=1000, tid=4),
              msg(2, SEND, 190, r, recv=len(q), last_recv=110, seq=7000, tid=4),
              msg(2, CLOSE, 310, sent=len(r), recv=len(q), last_send=190, last_recv=110)]
    b, _, _, rows = build(client + server)
    assert b.stats["pipelined_calls"] == 2 and b.stats["pipelined_rest_spans"] == 0
    qs, rs = starts(reqs), starts(resps)
    for incoming in ("outgoing", "incoming"):
        side = sorted((x for x in rows if x["direction"] == incoming), key=lambda x: x["req_seq"])
        assert [x["resource"] for x in side] == ["GET /a", "POST /b", "GET /c", "DELETE /d"]
        assert [x["http_status_code"] for x in side] == ["200", "201", "404", "500"]
        assert [x["status"] for x in side] == ["ok", "ok", "warning", "error"]
        assert [x["req_seq"] for x in side] == [1000 + o for o in qs]
        assert [x["resp_seq"] for x in side] == [7000 + o for o in rs]
        sent, got = ("bytes_written", "bytes_read") if incoming == "outgoing" else ("bytes_read", "bytes_written")
        assert [(x[sent], x[got]) for x in side] == [(len(a), len(c)) for a, c in zip(reqs, resps)]
        assert [x.get("app_trace_id") for x in side] == [None, None, "0af7651916cd43dd8448eb211c80319c", None]


def test_http_responses_past_the_capture_are_one_rest_span():
    """The server's responses in separate writes: the record holds the
    first write only; the first response is its own span, the three
    after it one span from their first bytes, counted, with no status
    (none of theirs was seen), never the first's."""
    reqs = [b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(4)]
    resps = [http_resp(200 + i, b"body%d" % i) for i in range(4)]
    q, r = b"".join(reqs), b"".join(resps)
    b, _, _, rows = build([msg(2, RECV, 110, q, seq=1000, tid=4),
                           msg(2, SEND, 190, resps[0], nbytes=len(resps[0]), recv=len(q), last_recv=110, seq=7000,
                               tid=4),
                           msg(2, CLOSE, 310, sent=len(r), recv=len(q), last_send=195, last_recv=110)])
    rows.sort(key=lambda x: x["req_seq"])
    assert b.stats["pipelined_rest_spans"] == 1
    assert [(x["resource"], x["req_seq"], x["resp_seq"]) for x in rows] == \
        [("GET /0", 1000, 7000), ("GET /1", 1000 + len(reqs[0]), 7000 + len(resps[0]))]
    assert rows[0]["http_status_code"] == "200" and rows[1]["status"] == "unknown"
    assert rows[1]["http_status_code"] is None
    assert (rows[1]["bytes_read"], rows[1]["bytes_written"]) == (len(q) - len(reqs[0]), len(r) - len(resps[0]))


def test_counts_that_contradict_stay_one_span():
    """Two requests in one write but one response and nothing more in the
    read (the second's answer comes in a later read): no split, counted."""
    reqs = [b"GET /a HTTP/1.1\r\n\r\n", b"GET /b HTTP/1.1\r\n\r\n"]
    q, r = b"".join(reqs), http_resp(200, b"a")
    b, _, _, rows = build([msg(1, SEND, 100, q, seq=1000), msg(1, RECV, 200, r, seq=50, sent=len(q), last_send=100),
                           msg(1, CLOSE, 300, sent=len(q), recv=len(r), last_send=100, last_recv=200)])
    assert b.stats["pipelined_mismatched"] == 1 and len(rows) == 1
    assert (rows[0]["resource"], rows[0]["req_seq"], rows[0]["resp_seq"]) == ("GET /a", 1000, 50)


def test_redis_and_http_in_one_step():
    """Both protocols split in one table, each span in its place."""
    cmds = [redis_cmd(b"GET", b"a"), redis_cmd(b"GET", b"b")]
    reqs = [b"GET /x HTTP/1.1\r\n\r\n", b"GET /y HTTP/1.1\r\n\r\n"]
    resps = [http_resp(200, b""), http_resp(404, b"")]
    rq, rr = b"".join(cmds), b"$1\r\n1\r\n$-1\r\n"
    hq, hr = b"".join(reqs), b"".join(resps)
    rows = build([msg(1, SEND, 100, rq, seq=10),
                  msg(1, RECV, 200, rr, seq=20, sent=len(rq), last_send=100),
                  msg(1, CLOSE, 300, sent=len(rq), recv=len(rr), last_send=100, last_recv=200),
                  msg(2, SEND, 100, hq, seq=30),
                  msg(2, RECV, 200, hr, seq=40, sent=len(hq), last_send=100),
                  msg(2, CLOSE, 300, sent=len(hq), recv=len(hr), last_send=100, last_recv=200)])[3]
    got = sorted((x["resource"], x["req_seq"], x["resp_seq"]) for x in rows)
    assert got == [("GET", 10, 20), ("GET", 10 + len(cmds[0]), 27),
                   ("GET /x", 30, 40), ("GET /y", 30 + len(reqs[0]), 40 + len(resps[0]))]


def test_pipelined_entries_get_their_own_ids_and_no_child_a_wrong_parent():
    """A server thread receives two requests in one read and calls Redis
    while serving them: which of the two a call serves cannot be told, so
    the call is a root of its own (counted), and the two entry spans have
    ids of their own; a pipeline of exits keeps its parent's id."""
    reqs = [b"GET /a HTTP/1.1\r\n\r\n", b"GET /b HTTP/1.1\r\n\r\n"]
    resps = [http_resp(200, b"a"), http_resp(200, b"b")]
    q, r = b"".join(reqs), b"".join(resps)
    cmds = redis_cmd(b"GET", b"a") + redis_cmd(b"GET", b"b")
    b, _, _, rows = build([msg(1, RECV, 100, q, seq=10, tid=5),
                           msg(2, SEND, 120, cmds, seq=70, tid=5),
                           msg(2, RECV, 130, b"$1\r\n1\r\n$1\r\n2\r\n", seq=90, sent=len(cmds), last_send=120, tid=5),
                           msg(1, SEND, 150, r, seq=20, recv=len(q), last_recv=100, tid=5),
                           msg(1, CLOSE, 160, sent=len(r), recv=len(q), last_send=150, last_recv=100),
                           msg(2, CLOSE, 170, sent=len(cmds), recv=14, last_send=120, last_recv=130)])
    entries = sorted((x for x in rows if x["direction"] == "incoming"), key=lambda x: x["req_seq"])
    exits = [x for x in rows if x["direction"] == "outgoing"]
    assert [x["resource"] for x in entries] == ["GET /a", "GET /b"] and len(exits) == 2
    ids = {x["thread_trace_id"] for x in entries}
    assert len(ids) == 2 and all(i > 0 for i in ids)
    assert len({x["thread_trace_id"] for x in exits}) == 1 and not ids & {x["thread_trace_id"] for x in exits}
    assert b.stats["exits_ambiguous_parent"] == 1

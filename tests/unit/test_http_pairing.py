"""Request/response pairing (dkebpf._http.pair through HttpPipeline) on
hand-made l7_event records: keep-alive, pipelining, both sides, carry-over
between intervals, close totals, kernel totals, drops."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _http, _records
from dkebpf.plugins.httpflow import HttpPipeline
from reference import http_ref

SEND, RECV, CLOSE = _records.L7_SEND, _records.L7_RECV, _records.L7_CLOSE
S = 10**9  # settle/expire scale


def ev(sk, op, ts, sent, recv, nbytes=0, payload=b"", pid=100, ts_other=0, counted=True):
    e = np.zeros(1, _records.L7_EVENT_DTYPE)
    e["sk"], e["pid"], e["op"], e["ts_ns"] = sk, pid, op, ts
    e["sk_sent"], e["sk_recv"], e["ts_other_ns"] = sent, recv, ts_other
    e["bytes"] = nbytes or len(payload)
    e["cap_len"] = min(len(payload), 512)
    e["payload"] = payload[:512].ljust(512, b"\0")
    e["flags"] = _records.L7_COUNTED if counted else 0
    e["family"], e["proto"] = 4, 6
    e["direction"] = 1
    return e


def req(path, method="GET", extra=b""):
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n".encode() + extra + b"\r\n"


def resp(code):
    return f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n".encode()


def run(pipe, events, now):
    events = np.concatenate(events) if events else np.empty(0, _records.L7_EVENT_DTYPE)
    e, m, p = pipe.process(events, now)
    rows = pipe.rows(e, m, p)
    r = rows.to_pydict()
    return [(r["method"][i], r["path"][i], r["status_code"][i], r["bytes_written"][i], r["bytes_read"][i],
             r["latency"][i]) for i in range(len(p))]


def test_keep_alive_client_with_continuations_and_close():
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    got = run(pipe, [
        ev(1, SEND, 100, 0, 0, 50, req("/a")),
        ev(1, RECV, 200, 50, 0, 300, resp(200), ts_other=100),
        # 400 more bytes of the first response came as continuations (map only)
        ev(1, SEND, 300, 50, 700, 60, req("/b", "POST")),
        # the POST body went out in a continuation of 40 bytes at 350
        ev(1, RECV, 450, 150, 700, 200, resp(404), ts_other=350),
        ev(1, CLOSE, 500, 150, 1000),
    ], now=600)
    assert got == [("GET", "/a", 200, 50, 700, 100), ("POST", "/b", 404, 100, 300, 100)]
    assert len(pipe.carried_msgs) == 0


def test_pipelined_server_side_settles_with_latest_totals():
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    three = req("/1") + req("/2") + req("/3")
    n = len(req("/1"))
    got = run(pipe, [
        ev(2, RECV, 100, 0, 0, len(three), three),
        ev(2, SEND, 200, 0, len(three), 100, resp(200), ts_other=100),
        ev(2, SEND, 300, 100, len(three), 100, resp(500), ts_other=100),
        ev(2, SEND, 400, 200, len(three), 100, resp(404), ts_other=100),
    ], now=400 + 2 * S)  # all quiet for longer than settle
    # server side: the request was read, the response written
    assert got == [("GET", "/1", 200, 100, n, 100), ("GET", "/2", 500, 100, n, 200),
                   ("GET", "/3", 404, 100, n, 300)]


def test_pipelined_client_responses_in_one_read():
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    reqs = req("/x") + req("/y")
    resps = resp(200) + resp(201)
    got = run(pipe, [
        ev(3, SEND, 100, 0, 0, len(reqs), reqs),
        ev(3, RECV, 250, len(reqs), 0, len(resps), resps, ts_other=100),
        ev(3, CLOSE, 300, len(reqs), len(resps)),
    ], now=300)
    r = len(resp(200))
    assert got == [("GET", "/x", 200, len(req("/x")), r, 150), ("GET", "/y", 201, len(req("/y")), r, 150)]


def test_carry_over_between_intervals_and_kernel_totals():
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    pipe.totals_fns.append(lambda sks: np.array([(4, 30, 5000)], _http.TOTALS_DTYPE) if 4 in sks else None)
    assert run(pipe, [ev(4, SEND, 100, 0, 0, 30, req("/slow"))], now=200) == []
    assert len(pipe.carried_msgs) == 1  # waiting for its response
    # the response starts; it may still be arriving: not final yet
    assert run(pipe, [ev(4, RECV, 1000, 30, 0, 100, resp(200), ts_other=100)], now=1100) == []
    assert len(pipe.carried_msgs) == 2
    # quiet for longer than settle_ns: the kernel map says 5000 bytes came
    assert run(pipe, [], now=1000 + 2 * S) == [("GET", "/slow", 200, 30, 5000, 900)]
    assert len(pipe.carried_msgs) == 0 and len(pipe.carried_events) == 0


def test_next_request_finishes_previous_response_without_settling():
    pipe = HttpPipeline(settle_ns=100 * S, expire_ns=600 * S)
    got = run(pipe, [
        ev(5, SEND, 100, 0, 0, 20, req("/1")),
        ev(5, RECV, 200, 20, 0, 50, resp(200), ts_other=100),
        ev(5, SEND, 300, 20, 80, 20, req("/2")),
        ev(5, RECV, 400, 40, 80, 50, resp(200), ts_other=300),
        ev(5, SEND, 500, 40, 130, 20, req("/3")),
    ], now=600)
    # /1 is complete (the next response started); /2 waits for settle or close
    assert got == [("GET", "/1", 200, 20, 80, 100)]
    got = run(pipe, [ev(5, RECV, 700, 60, 130, 50, resp(301), ts_other=500), ev(5, CLOSE, 800, 60, 180)],
              now=900)
    assert got == [("GET", "/2", 200, 20, 50, 100), ("GET", "/3", 301, 20, 50, 200)]


def test_connections_kept_apart_by_sk_and_pid():
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    got = run(pipe, [
        ev(6, SEND, 100, 0, 0, 20, req("/p1"), pid=1),
        ev(6, SEND, 110, 0, 0, 20, req("/p2"), pid=2),
        ev(7, RECV, 120, 0, 0, 20, req("/srv"), pid=1),
        ev(6, RECV, 200, 20, 0, 40, resp(200), pid=2, ts_other=110),
        ev(7, SEND, 210, 0, 20, 40, resp(404), pid=1, ts_other=120),
        ev(6, RECV, 220, 20, 0, 40, resp(500), pid=1, ts_other=100),
        ev(6, CLOSE, 300, 20, 40, pid=1), ev(6, CLOSE, 300, 20, 40, pid=2), ev(7, CLOSE, 300, 40, 20, pid=1),
    ], now=400)
    assert sorted(got) == [("GET", "/p1", 500, 20, 40, 120), ("GET", "/p2", 200, 20, 40, 90),
                           ("GET", "/srv", 404, 40, 20, 90)]


def test_drops_are_counted():
    pipe = HttpPipeline(settle_ns=S, expire_ns=10 * S)
    got = run(pipe, [
        ev(8, RECV, 100, 0, 0, 40, resp(200)),  # answer to a request before we watched
        ev(8, SEND, 200, 0, 40, 20, req("/late")),
        ev(8, CLOSE, 300, 20, 40),  # never answered
        ev(9, SEND, 100, 0, 0, 20, req("/lost")),  # never answered, never closed
    ], now=400)
    assert got == []
    assert pipe.stats["unmatched_responses"] == 1 and pipe.stats["unanswered_closed"] == 1
    assert len(pipe.carried_msgs) == 1
    run(pipe, [], now=100 + 11 * S)
    assert pipe.stats["expired_requests"] == 1 and len(pipe.carried_msgs) == 0


def test_uncounted_source_uses_the_calls_own_bytes():
    """A source without per-connection counters (flags 0): bytes come from
    the records themselves, the pair is final at once."""
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    got = run(pipe, [
        ev(10, SEND, 100, 0, 0, 0, req("/tls"), counted=False),
        ev(10, RECV, 180, 0, 0, 900, b"HTTP/1.1 200 OK\r\nContent-Length: 863\r\n\r\nbody", counted=False),
    ], now=200)
    assert got == [("GET", "/tls", 200, len(req("/tls")), 900, 80)]


def interim(code=100):
    return f"HTTP/1.1 {code} Continue\r\n\r\n".encode()


def test_interim_responses_are_not_pairing_targets():
    """Expect: 100-continue: the request gets the final status; latency runs
    from the body's last byte to the final response; the response's bytes
    include the interim one (RFC 9110 section 15.2)."""
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    head = req("/up", "POST", b"Content-Length: 1000\r\nExpect: 100-continue\r\n")
    i100, final = interim(100), resp(201)
    got = run(pipe, [
        ev(11, SEND, 100, 0, 0, len(head), head),
        ev(11, RECV, 200, len(head), 0, len(i100), i100, ts_other=100),
        # the body went out as a continuation (map only) at 300
        ev(11, RECV, 450, len(head) + 1000, len(i100), len(final), final, ts_other=300),
        ev(11, SEND, 500, len(head) + 1000, len(i100) + len(final), 0, req("/next")),
        ev(11, RECV, 560, len(head) + 1000 + len(req("/next")), len(i100) + len(final), len(final), final,
           ts_other=500),
        ev(11, CLOSE, 600, len(head) + 1000 + len(req("/next")), len(i100) + 2 * len(final)),
    ], now=700)
    assert got == [("POST", "/up", 201, len(head) + 1000, len(i100) + len(final), 150),
                   ("GET", "/next", 201, len(req("/next")), len(final), 60)]
    assert pipe.stats["unmatched_responses"] == 0


def test_interim_and_final_response_in_one_read_and_101_is_final():
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    both = interim(103) + resp(200)
    up = req("/ws", extra=b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    got = run(pipe, [
        ev(12, SEND, 100, 0, 0, 20, req("/hint")),
        ev(12, RECV, 200, 20, 0, len(both), both, ts_other=100),
        ev(12, SEND, 300, 20, len(both), len(up), up),
        ev(12, RECV, 400, 20 + len(up), len(both), 40, interim(101), ts_other=300),
        ev(12, CLOSE, 500, 20 + len(up), len(both) + 40),
    ], now=600)
    assert got == [("GET", "/hint", 200, 20, len(both), 100), ("GET", "/ws", 101, len(up), 40, 100)]


def test_interim_response_waits_with_its_request_across_intervals():
    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    head = req("/slow", "PUT", b"Expect: 100-continue\r\n")
    i100 = interim(100)
    assert run(pipe, [ev(13, SEND, 100, 0, 0, len(head), head),
                      ev(13, RECV, 200, len(head), 0, len(i100), i100, ts_other=100)], now=300) == []
    got = run(pipe, [ev(13, RECV, 5000, len(head) + 64, len(i100), 40, resp(204), ts_other=4000),
                     ev(13, CLOSE, 6000, len(head) + 64, len(i100) + 40)], now=7000)
    assert got == [("PUT", "/slow", 204, len(head) + 64, len(i100) + 40, 1000)]


FINAL_CODES = [101, 200, 204, 404, 500]
INTERIM_CODES = [100, 102, 103]
exchange = st.tuples(st.integers(20, 300), st.lists(st.sampled_from(INTERIM_CODES), max_size=2),
                     st.sampled_from(FINAL_CODES), st.integers(30, 400), st.integers(0, 2000),
                     st.booleans())


@settings(max_examples=200, deadline=None)
@given(stray=st.lists(st.sampled_from(INTERIM_CODES + FINAL_CODES), max_size=2),
       exchanges=st.lists(exchange, min_size=1, max_size=6))
def test_pairing_agrees_with_the_reference(stray, exchanges):
    """Client side of a connection that closes: responses to requests
    before we watched, then exchanges with interim responses, bodies sent
    after them, some requests unanswered at the end."""
    msgs, events = [], []
    sent = recv = 0
    ts = last_send = 0

    def add(kind, op, payload, nbytes, status=0):
        nonlocal sent, recv, ts, last_send
        ts += 100
        pos = sent if op == SEND else recv
        msgs.append({"kind": kind, "status": status, "pos": pos, "ts": ts, "ts_other": last_send})
        events.append(ev(20, op, ts, sent, recv, nbytes, payload, ts_other=0 if op == SEND else last_send))
        if op == SEND:
            sent += nbytes
            last_send = ts
        else:
            recv += nbytes

    for code in stray:
        add(http_ref.RESPONSE, RECV, resp(code), 60, code)
    for qlen, interims, code, rlen, body, answered in exchanges:
        add(http_ref.REQUEST, SEND, req("/e"), qlen)
        for c in interims:
            add(http_ref.RESPONSE, RECV, interim(c), 30, c)
        if body:  # the body goes out as a continuation: counters only
            ts += 100
            sent += body
            last_send = ts
        if answered:
            add(http_ref.RESPONSE, RECV, resp(code), rlen, code)
    events.append(ev(20, CLOSE, ts + 100, sent, recv))
    want, unmatched = http_ref.pair_closed(msgs, sent, recv)

    pipe = HttpPipeline(settle_ns=S, expire_ns=60 * S)
    e, m, p = pipe.process(np.concatenate(events), ts + 200)
    # msgs are sorted by time like the reference's list; map rows back by ts
    order = {msg["ts"]: i for i, msg in enumerate(msgs)}
    got = [(order[int(m["ts"][r["req"]])], order[int(m["ts"][r["resp"]])], int(r["req_bytes"]),
            int(r["resp_bytes"]), int(r["latency"])) for r in p]
    assert got == want
    assert pipe.stats["unmatched_responses"] == unmatched

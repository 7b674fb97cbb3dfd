"""ebpf-trace's span builder (ext/trace.pyx pair/link_threads, and the
SpanBuilder columns) on hand-made span_msg records; and agreement with the
plain-Python reference (tests/reference/trace_ref.py) on generated ones."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _trace
from dkebpf.plugins.trace import SpanBuilder, _records_of
from reference import trace_ref

from support.span_records import CLOSE, RECV, S, SEND, Names, build, msg, redis_cmd


def test_server_span_with_redis_children_on_its_thread():
    """A server thread receives GET /item/a, calls redis twice on its own
    connection, answers: one entry span, two exit spans sharing its
    thread_trace_id; seqs, bytes, durations from the records."""
    req = b"GET /item/a?x=1 HTTP/1.1\r\nHost: t\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-" \
          b"b7ad6b7169203331-01\r\n\r\n"
    rows = build([
        msg(1, RECV, 1000, req, seq=5000, tid=7),
        msg(2, SEND, 1100, redis_cmd(b"SET", b"a", b"1"), seq=9000, tid=7),
        msg(2, RECV, 1200, b"+OK\r\n", sent=30, last_send=1100, tid=7, seq=7000),
        msg(2, SEND, 1300, redis_cmd(b"GET", b"a"), sent=30, recv=5, last_send=1100, last_recv=1200, tid=7,
            seq=9030),
        msg(2, RECV, 1400, b"-ERR wrong\r\n", sent=50, recv=5, last_send=1300, last_recv=1200, tid=7, seq=7005),
        msg(1, SEND, 1500, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", recv=len(req), last_recv=1000,
            tid=7, seq=3000),
        msg(1, CLOSE, 1600, sent=80, recv=len(req), last_send=1550, last_recv=1000),
        msg(2, CLOSE, 1700, sent=50, recv=17, last_send=1300, last_recv=1450),
    ])[3]
    server = [r for r in rows if r["direction"] == "incoming"]
    redis = sorted((r for r in rows if r["direction"] == "outgoing"), key=lambda r: r["ktime"])
    assert len(server) == 1 and len(redis) == 2
    s = server[0]
    assert (s["http_method"], s["http_route"], s["http_status_code"], s["status"]) == ("GET", "/item/a", "200", "ok")
    assert (s["resource"], s["operation"], s["ebpf_span_type"]) == ("GET /item/a", "HTTP", "entry")
    assert (s["req_seq"], s["resp_seq"], s["bytes_read"], s["bytes_written"]) == (5000, 3000, len(req), 80)
    assert s["duration"] == 0 and s["ktime"] == 1000  # µs: 1550-1000 ns
    assert s["app_trace_id"] == "0af7651916cd43dd8448eb211c80319c" and s["app_parent_id"] == "b7ad6b7169203331"
    assert [r["resource"] for r in redis] == ["SET", "GET"]
    assert [r["operation"] for r in redis] == ["Redis SET", "Redis GET"]
    assert [r["status"] for r in redis] == ["ok", "error"]
    assert redis[1]["err_msg"] == "ERR wrong" and redis[0]["status_msg"] == "OK"
    assert [(r["req_seq"], r["resp_seq"]) for r in redis] == [(9000, 7000), (9030, 7005)]
    assert [(r["bytes_written"], r["bytes_read"]) for r in redis] == [(30, 5), (20, 12)]
    assert {r["thread_trace_id"] for r in rows} == {s["thread_trace_id"]} and s["thread_trace_id"] > 0
    assert {r["thread_name"] for r in rows} == {"worker"}
    assert {(r["process_name"], r["service"]) for r in rows} == {("srv", "svc")}


def test_open_response_waits_then_settles_and_requests_carry():
    """A response nothing followed yet is carried until it has been quiet
    for the settle time; an unanswered request is carried; the thread id
    assigned before carrying is kept."""
    b = SpanBuilder(Names(), settle_ns=S)
    msgs, spans = b.step(np.concatenate([msg(1, RECV, 10 * S, b"GET /a HTTP/1.1\r\n\r\n"),
                                         msg(1, SEND, 10 * S + 5, b"HTTP/1.1 204 No\r\n\r\n"),
                                         msg(3, SEND, 10 * S + 7, redis_cmd(b"PING"))]), 10 * S + 10)
    assert len(spans) == 0 and len(b.carried) == 3
    ttid = int(msgs["user"][msgs["sk"] == 3][0])
    assert ttid == int(msgs["user"][msgs["sk"] == 1][0])
    msgs, spans = b.step(msg(3, RECV, 12 * S, b"+PONG\r\n"), 12 * S + 1)
    assert len(spans) == 1 and len(b.carried) == 2  # the PONG is not quiet for long enough yet
    rows = b.table(msgs, spans, 0).to_pylist()
    msgs, spans = b.step(np.zeros(0, _trace.MSG_DTYPE), 13 * S + 1)
    rows += b.table(msgs, spans, 0).to_pylist()
    assert sorted(r["resource"] for r in rows) == ["GET /a", "PING"]
    assert {r["thread_trace_id"] for r in rows} == {ttid}
    assert len(b.carried) == 0 and b.stats["spans"] == 2


def test_client_side_connection_and_undetected_protocol():
    """A client that sends first: outgoing; a connection speaking nothing
    known is given up after a few message starts."""
    rows = build([msg(5, SEND, 100, b"POST /p HTTP/1.1\r\n\r\n", tid=9),
                  msg(5, RECV, 300, b"HTTP/1.1 503 X\r\n\r\n", sent=20, last_send=100),
                  msg(5, CLOSE, 400, sent=20, recv=18, last_recv=350)]
                 + [msg(6, SEND if i % 2 else RECV, 100 + i, b"\x00\x01junk") for i in range(6)])[3]
    assert len(rows) == 1
    r = rows[0]
    assert (r["direction"], r["ebpf_span_type"], r["status"], r["http_status_code"]) == \
        ("outgoing", "exit", "error", "503")


def _gen_msgs():
    payloads = st.sampled_from([b"GET /a HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", redis_cmd(b"GET", b"k"),
                                b"+OK\r\n", b"junk....", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b""])
    one = st.tuples(st.integers(1, 4), st.sampled_from([SEND, RECV, RECV, SEND, CLOSE]), st.integers(0, 50),
                    payloads, st.integers(1, 3), st.integers(0, 1000), st.integers(0, 1000), st.booleans())
    return st.lists(one, max_size=40)


@settings(max_examples=300, deadline=None)
@given(_gen_msgs(), st.integers(0, 60), st.integers(0, 60))
def test_pair_and_threads_agree_with_reference(items, settle, expire):
    recs = [msg(sk, op, ts, p, tid=tid, sent=a, recv=b_, last_send=a // 2, last_recv=b_ // 2, seq=ts,
                more=int(more and op != CLOSE)) for sk, op, ts, p, tid, a, b_, more in items]
    M = _records_of(*recs)
    rng = np.random.default_rng(len(M))
    M = _records_of(M[rng.permutation(len(M))])  # pair() takes the order, the records stay where they are
    order = np.lexsort((M["ts"], M["sk"]))
    dicts = [{k: (bytes(m[k]) if k == "payload" else int(m[k])) for k in ("sk", "op", "ts", "sk_sent", "sk_recv",
              "ts_last_send", "ts_last_recv", "bytes", "cap_len", "payload", "pid", "tid", "user", "more")}
             for m in M[order]]
    role, spans, carry, seen, _, until = _trace.pair(M, order, np.zeros(0, _trace.CONN_DTYPE), settle, expire)
    rrole, rspans, rcarry, rseen, runtil = trace_ref.pair(dicts, {}, settle, expire)
    assert [(d["cap_len"], d["payload"][:d["cap_len"]]) for d in dicts] == \
        [(int(m["cap_len"]), bytes(m["payload"])[:m["cap_len"]]) for m in M[order]]
    # the reference walks the sorted records: its indices are positions in order
    for sp in rspans:
        sp["req"], sp["resp"] = int(order[sp["req"]]), int(order[sp["resp"]])
        sp["nxt"] = int(order[sp["nxt"]]) if sp["nxt"] >= 0 else -1
    assert role[order].tolist() == rrole and carry[order].tolist() == rcarry
    req = np.asarray(rrole) == 1
    assert until[order][req].tolist() == np.asarray(runtil, dtype=np.uint64)[req].tolist()
    assert [{k: int(s[k]) for k in rspans[0]} for s in spans] == rspans if rspans else len(spans) == 0
    assert {int(c["sk"]): (int(c["proto"]), int(c["req_op"]), int(c["closed"])) for c in seen} == \
        {k: (v["proto"], v["req_op"], v["closed"]) for k, v in rseen.items()}
    stats = _trace.link_threads(M, role, until)
    rowner, rstats = trace_ref.link_threads(dicts, rrole, runtil)
    assert stats == rstats
    owner = {int(order[i]): (kind, int(order[j])) for i, (kind, j) in rowner.items()}
    entry_ids = {int(M["user"][k]) for k, o in owner.items() if o == ("msg", k)}
    for i, (kind, j) in owner.items():
        assert M["user"][i] > 0
        if kind == "msg":
            assert M["user"][i] == M["user"][j]
        else:  # a root of its own: shares its id with no entry
            assert int(M["user"][i]) not in entry_ids


def pg(t, body):
    return t + (len(body) + 4).to_bytes(4, "big") + body


def test_postgresql_queries_errors_and_startup_left_out():
    startup = (8 + 14 + 1 + 4).to_bytes(4, "big")
    startup = (len(b"user\0postgres\0\0") + 8).to_bytes(4, "big") + (196608).to_bytes(4, "big") + b"user\0postgres\0\0"
    ok_z = pg(b"R", b"\0\0\0\0") + pg(b"Z", b"I")
    q1 = pg(b"Q", b"select * from t where id = 42 and name = 'x'\0")
    r1 = pg(b"T", b"\0\0") + pg(b"D", b"\0\0") + pg(b"C", b"SELECT 1\0") + pg(b"Z", b"I")
    q2 = pg(b"Q", b"delete from nope\0")
    r2 = pg(b"E", b"SERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0") + pg(b"Z", b"I")
    rows = build([msg(9, SEND, 10, startup), msg(9, RECV, 20, ok_z), msg(9, SEND, 30, q1), msg(9, RECV, 40, r1),
                  msg(9, SEND, 50, q2), msg(9, RECV, 60, r2), msg(9, CLOSE, 70)])[3]
    assert [(r["resource"], r["resource_type"], r["status"], r["operation"]) for r in rows] == [
        ("select * from t where id = ? and name = ?", "SELECT", "ok", "PostgreSQL"),
        ("delete from nope", "DELETE", "error", "PostgreSQL")]
    assert (rows[0]["pgsql_msg"], rows[0]["pgsql_affected_row"], rows[0]["pgsql_err_msg"]) == ("SELECT 1", 1, None)
    assert rows[1]["pgsql_err_msg"] == 'relation "nope" does not exist'
    assert {r["direction"] for r in rows} == {"outgoing"}


def test_short_start_continued_by_the_next_call():
    """Go's net/http reads a request's first byte alone: the next call's
    record (more=1) completes the request line."""
    rows = build([msg(4, RECV, 100, b"G"), msg(4, RECV, 110, b"ET /go HTTP/1.1\r\n\r\n", more=1),
                  msg(4, SEND, 200, b"HTTP/1.1 200 OK\r\n\r\n", recv=20, last_recv=110),
                  msg(4, CLOSE, 300, sent=19, recv=20, last_send=200)])[3]
    assert [(r["http_route"], r["http_status_code"], r["bytes_read"]) for r in rows] == [("/go", "200", 20)]


def test_socket_reused_after_close_starts_afresh():
    """A struct sock freed (close record) and reused at once by a
    connection of the other side: the new one's direction is its own."""
    rows = build([msg(7, RECV, 10, redis_cmd(b"GET", b"k"), pid=1), msg(7, SEND, 20, b"$-1\r\n", pid=1),
                  msg(7, CLOSE, 30),
                  msg(7, SEND, 40, redis_cmd(b"SET", b"k", b"v"), pid=2), msg(7, RECV, 50, b"+OK\r\n", pid=2),
                  msg(7, CLOSE, 60)])[3]
    assert [(r["pid"], r["direction"], r["resource"]) for r in rows] == [("1", "incoming", "GET"),
                                                                          ("2", "outgoing", "SET")]


def fake_proc(tmp_path, procs):
    """A /proc with stat, comm and environ of the given {pid: (name, env)}."""
    for pid, (name, env) in procs.items():
        d = tmp_path / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} ({name}) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {pid * 7} 0 0\n")
        (d / "comm").write_text(name + "\n")
        (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    return str(tmp_path)


def selector(tmp_path, procs, **lists):
    import types

    from dkebpf.plugins.trace import ProcessSelector
    cfg = types.SimpleNamespace(trace_name_list=(), trace_env_list=(), trace_name_blacklist=("datakit",),
                                trace_env_blacklist=())
    for k, v in lists.items():
        setattr(cfg, k, v)
    return ProcessSelector(cfg, self_pid=99, proc=fake_proc(tmp_path, procs))


PROCS = {10: ("nginx", {}), 11: ("python3", {"DKE_SERVICE": "shop", "TEAM": "a"}), 12: ("datakit", {}),
         13: ("datakit-ebpf", {}), 99: ("dkebpf", {}), 14: ("redis-server", {"OTEL_SERVICE_NAME": "cache"})}


def test_process_lists_blacklists_win(tmp_path):
    # default: every process but the collector and datakit*
    assert selector(tmp_path / "a", PROCS).scan() == {10: True, 11: True, 12: False, 13: False, 99: False, 14: True}
    # a name list: only those; an env list adds the processes having a listed variable
    s = selector(tmp_path / "b", PROCS, trace_name_list=("nginx", "datakit"), trace_env_list=("TEAM",))
    assert s.scan() == {10: True, 11: True, 12: False, 13: False, 99: False, 14: False}
    # blacklists win over the lists
    s = selector(tmp_path / "c", PROCS, trace_name_list=("nginx", "python3"), trace_name_blacklist=("nginx",),
                 trace_env_blacklist=("TEAM",))
    assert s.scan() == {10: False, 11: False, 12: False, 13: False, 99: False, 14: False}
    # the service its environment names (first of DKE_SERVICE, ..., OTEL_SERVICE_NAME), else "" (the name then)
    assert selector(tmp_path / "d", PROCS).services(np.array([11, 14, 10, 11])).to_pylist() == \
        ["shop", "cache", "", "shop"]


def my(seq, body):
    return len(body).to_bytes(3, "little") + bytes([seq]) + body


def test_mysql_queries_errors_and_handshake_left_out():
    greeting = my(0, b"\x0a5.5.5-10.11.6-MariaDB\x00" + b"\x01\x00\x00\x00" + b"x" * 40)
    login = my(1, b"\x85\xa6\xff\x01" + b"\x00" * 28 + b"root\x00")
    ok = my(2, b"\x00\x00\x00\x02\x00\x00\x00")
    q1 = my(0, b"\x03select * from t where id = 7")
    r1 = my(1, b"\x01") + my(2, b"\x03def")
    q2 = my(0, b"\x03drop table nope")
    r2 = my(1, b"\xff\x33\x04#42S02Unknown table 'nope'")
    rows = build([msg(3, RECV, 10, greeting), msg(3, SEND, 20, login), msg(3, RECV, 30, ok),
                  msg(3, SEND, 40, q1), msg(3, RECV, 50, r1), msg(3, SEND, 60, q2), msg(3, RECV, 70, r2),
                  msg(3, CLOSE, 80)])[3]
    assert [(r["resource"], r["resource_type"], r["status"], r["operation"], r["direction"]) for r in rows] == [
        ("select * from t where id = ?", "SELECT", "ok", "MySQL", "outgoing"),
        ("drop table nope", "DROP", "error", "MySQL", "outgoing")]
    assert (rows[1]["err_code"], rows[1]["err_msg"]) == (1075, "Unknown table 'nope'")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from([SEND, RECV, CLOSE]), st.integers(0, 100),
                          st.one_of(st.sampled_from([b"GET /a HTTP/1.1\r\n", b"HTTP/1.1 500 X\r\n",
                                                     redis_cmd(b"GET", b"k"), b"-ERR x\r\n",
                                                     my(0, b"\x03select 1"), my(1, b"\xff\x01\x00#HY000oops"),
                                                     pg(b"Q", b"select 1\0"), pg(b"E", b"Mbad\0\0")]),
                                    st.binary(max_size=64)),
                          st.binary(max_size=32), st.booleans()), max_size=30))
def test_any_payloads_make_spans_without_error(items):
    """Bytes of any kind after a protocol's first message (a hostile or
    broken peer): spans or none, never an exception, the required fields
    always there."""
    recs = [msg(sk, op, ts, head + tail, more=int(more and op != CLOSE)) for sk, op, ts, head, tail, more in items]
    b = SpanBuilder(Names())
    msgs, spans = b.step(_records_of(*recs), 10**12)
    for r in b.table(msgs, spans, 0).to_pylist():
        assert r["ebpf_span_type"] in ("entry", "exit") and r["direction"] in ("incoming", "outgoing")
        assert r["thread_trace_id"] > 0 and isinstance(r["req_seq"], int) and isinstance(r["resp_seq"], int)
        assert r["status"] and r["operation"]


def test_redis_pipeline_in_one_call_is_one_span_per_command():
    """Three commands in one write and their three replies in one read:
    three spans, each with its own command, reply, bytes and the sequence
    numbers of its own first byte (its call's plus its offset)."""
    cmds = [redis_cmd(b"SET", b"k", b"1"), redis_cmd(b"INCRBY", b"k", b"x"), redis_cmd(b"GET", b"k")]
    replies = [b"+OK\r\n", b"-ERR value is not an integer\r\n", b"$1\r\n1\r\n"]
    req, rep = b"".join(cmds), b"".join(replies)
    rows = build([msg(8, SEND, 100, req, seq=1000, tid=3),
                  msg(8, RECV, 200, rep, sent=len(req), last_send=100, seq=5000, tid=3),
                  msg(8, SEND, 300, redis_cmd(b"PING"), sent=len(req), recv=len(rep), last_recv=200,
                      seq=1000 + len(req)),
                  msg(8, RECV, 400, b"+PONG\r\n", seq=5000 + len(rep)),
                  msg(8, CLOSE, 500, sent=len(req) + 14, recv=len(rep) + 7, last_send=300, last_recv=400)])[3]
    rows.sort(key=lambda r: r["req_seq"])
    assert [(r["resource"], r["status"]) for r in rows] == \
        [("SET", "ok"), ("INCRBY", "error"), ("GET", "ok"), ("PING", "ok")]
    offs = [0, len(cmds[0]), len(cmds[0]) + len(cmds[1])]
    roffs = [0, len(replies[0]), len(replies[0]) + len(replies[1])]
    assert [r["req_seq"] for r in rows[:3]] == [1000 + o for o in offs]
    assert [r["resp_seq"] for r in rows[:3]] == [5000 + o for o in roffs]
    assert [(r["bytes_written"], r["bytes_read"]) for r in rows[:3]] == \
        [(len(c), len(x)) for c, x in zip(cmds, replies)]
    assert rows[1]["err_msg"] == "ERR value is not an integer" and rows[0]["status_msg"] == "OK"
    assert (rows[3]["req_seq"], rows[3]["bytes_written"]) == (1000 + len(req), 14)
    # the pipelined commands are one request of a thread serving nothing: one root id
    ids = [r["thread_trace_id"] for r in rows]
    assert len(set(ids[:3])) == 1 and ids[3] != ids[0]


def test_mysql_prepared_statement_executions_are_spans():
    """COM_STMT_PREPARE's OK names the statement id; each COM_STMT_EXECUTE
    of it is a span with the prepared text, across steps of the builder;
    an id prepared before we watched is an "EXECUTE" span; a closed socket
    forgets its statements (its memory and ids are reused)."""
    greeting = my(0, b"\x0a5.5.5-10.11.6-MariaDB\x00" + b"\x01\x00\x00\x00" + b"x" * 40)
    prep = my(0, b"\x16select name from t where id = ?")
    prep_ok = my(1, b"\x00" + (7).to_bytes(4, "little") + b"\x01\x00\x01\x00\x00\x00\x00")

    def execute(stmt):
        return my(0, b"\x17" + stmt.to_bytes(4, "little") + b"\x00\x01\x00\x00\x00")

    result = my(1, b"\x01") + my(2, b"\x03def")
    err = my(1, b"\xff\x33\x04#42S02Unknown table 't'")
    b = SpanBuilder(Names(), settle_ns=S)
    first = [msg(3, RECV, 10, greeting), msg(3, SEND, 20, prep), msg(3, RECV, 30, prep_ok),
             msg(3, SEND, 40, execute(7)), msg(3, RECV, 50, result)]
    msgs, spans = b.step(np.concatenate(first), 10 * S)
    rows = b.table(msgs, spans, 0).to_pylist()
    msgs, spans = b.step(np.concatenate([msg(3, SEND, 60 * S, execute(7)), msg(3, RECV, 61 * S, err),
                                         msg(3, SEND, 62 * S, execute(9)), msg(3, RECV, 63 * S, result),
                                         msg(3, CLOSE, 64 * S)]), 70 * S)
    rows += b.table(msgs, spans, 0).to_pylist()
    assert [(r["resource"], r["resource_type"], r["status"]) for r in rows] == [
        ("select name from t where id = ?", "SELECT", "ok"), ("select name from t where id = ?", "SELECT", "ok"),
        ("select name from t where id = ?", "SELECT", "error"), ("EXECUTE", "EXECUTE", "ok")]
    assert rows[2]["err_code"] == 1075
    assert len(b.statements.keys) == 1
    b.step(np.zeros(0, _trace.MSG_DTYPE), 71 * S)
    assert len(b.statements.keys) == 0  # the close forgot them (at the step after it)


def test_event_loop_exits_get_the_one_open_request_or_none():
    """One thread (an event loop) serving requests A (open 0..100) and B
    (open 50..200) on two connections, calling redis on a third: a call
    while only A is open is A's, while both are open nobody's (counted),
    while only B is open B's, after both ended nobody's."""
    get = b"GET /%s HTTP/1.1\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    recs = [msg(1, RECV, 0, get % b"a"), msg(1, SEND, 100, ok, recv=18, last_recv=0),
            msg(1, CLOSE, 110, sent=38, recv=18, last_send=100, last_recv=0),
            msg(2, RECV, 50, get % b"b"), msg(2, SEND, 200, ok, recv=18, last_recv=50),
            msg(2, CLOSE, 210, sent=38, recv=18, last_send=200, last_recv=50)]
    t = [10, 60, 150, 250]
    for k, ts in enumerate(t):
        recs += [msg(3, SEND, ts, redis_cmd(b"GET", b"%d" % k), sent=14 * k, recv=5 * k, last_send=t[k - 1] if k else 0,
                     last_recv=t[k - 1] + 1 if k else 0),
                 msg(3, RECV, ts + 1, b"$-1\r\n", sent=14 * (k + 1), recv=5 * k, last_send=ts)]
    recs.append(msg(3, CLOSE, 300, sent=56, recv=20, last_send=250, last_recv=251))
    b, msgs, spans, rows = build(recs)
    entry = {r["http_route"]: r["thread_trace_id"] for r in rows if r["direction"] == "incoming"}
    calls = [r["thread_trace_id"] for r in sorted((r for r in rows if r["direction"] == "outgoing"),
                                                   key=lambda r: r["ktime"])]
    assert calls[0] == entry["/a"] and calls[2] == entry["/b"]
    assert calls[1] not in entry.values() and calls[3] not in entry.values()
    assert (b.stats["exits_ambiguous_parent"], b.stats["exits_without_entry"]) == (1, 1)


def test_carried_records_are_bounded_by_half_the_stage():
    """What is carried (unanswered requests) stays at most half the
    staging buffer, the newest kept, so new records always find room; the
    rest counted as evicted."""
    b = SpanBuilder(Names(), stage_bytes=10 * _trace.MSG_DTYPE.itemsize)
    reqs = [msg(sk, RECV, S + sk, b"GET /a HTTP/1.1\r\n\r\n") for sk in range(1, 9)]
    b.step(np.concatenate(reqs), 2 * S)
    assert sorted(b.carried["sk"].tolist()) == [4, 5, 6, 7, 8] and b.stats["carried_evicted"] == 3
    # answered in the next step, after the carried ones in the stage
    msgs, spans = b.step(np.concatenate([msg(sk, SEND, 3 * S + sk, b"HTTP/1.1 204 No\r\n\r\n") for sk in (5, 8)]
                                        + [msg(sk, CLOSE, 4 * S + sk) for sk in (5, 8)]), 5 * S)
    assert sorted(msgs["sk"][spans["req"]].tolist()) == [5, 8]
    # the carried ones are in the stage: counted once
    assert sorted(b.carried["sk"].tolist()) == [4, 6, 7] and b.memory()["step_buffer"] == 7 * _trace.MSG_DTYPE.itemsize
    assert b.memory()["carried_records"] == 3 * _trace.MSG_DTYPE.itemsize


def test_addresses_per_connection_also_for_a_reused_socket():
    """src/dst ip and port are made once per connection: a socket closed
    and reused in the same step by another connection keeps its own."""
    first = [msg(1, RECV, 1000, b"GET /a HTTP/1.1\r\n\r\n"), msg(1, SEND, 1100, b"HTTP/1.1 200 OK\r\n\r\n"),
             msg(1, CLOSE, 1200)]
    second = [msg(1, RECV, 2000, b"GET /b HTTP/1.1\r\n\r\n"), msg(1, SEND, 2100, b"HTTP/1.1 200 OK\r\n\r\n"),
              msg(1, CLOSE, 2200), msg(2, RECV, 2300, b"GET /c HTTP/1.1\r\n\r\n"),
              msg(2, SEND, 2400, b"HTTP/1.1 200 OK\r\n\r\n"), msg(2, CLOSE, 2500)]
    for m in second[:3]:
        m["raddr"], m["rport"] = b"\x0a\0\0\x02" + b"\0" * 12, 50000
    rows = build(first + second)[3]
    assert sorted((r["http_route"], r["dst_ip"], r["dst_port"], r["src_port"]) for r in rows) == [
        ("/a", "127.0.0.1", "40000", "8080"), ("/b", "10.0.0.2", "50000", "8080"),
        ("/c", "127.0.0.1", "40000", "8080")]


def test_tls_read_of_unknown_seq_reports_zero():
    """An HTTPS request read inside a TLS record whose start the kernel
    did not see (a connection older than the collector: span_msg.seq_unknown;
    the kernel sends seq 0 then, the flag decides): the span's req_seq is 0,
    not a number that could be wrong; the response's (a write: always
    known) is kept."""
    req = b"GET /old HTTP/1.1\r\nHost: t\r\n\r\n"
    r = msg(1 | 1, RECV, 1000, req, seq=12345, tid=7)
    r["seq_unknown"] = 1
    rows = build([
        r,
        msg(1 | 1, SEND, 1500, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", recv=len(req), last_recv=1000,
            tid=7, seq=3000),
        msg(1 | 1, CLOSE, 1600, sent=39, recv=len(req), last_send=1500, last_recv=1000),
    ])[3]
    assert [(x["http_route"], x["req_seq"], x["resp_seq"]) for x in rows] == [("/old", 0, 3000)]

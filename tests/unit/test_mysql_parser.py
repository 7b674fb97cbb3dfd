"""dkebpf._mysql.parse against tests/reference/mysql_ref.py (hypothesis,
fuzz) and pinned exchanges: text queries, prepared statements, OK/ERR."""
import struct

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _mysql
from reference import mysql_ref as ref


def packet(seq, body):
    return struct.pack("<I", len(body))[:3] + bytes([seq]) + body


def err(code, msg, state=b"42S02"):
    return b"\xff" + struct.pack("<H", code) + b"#" + state + msg


def parse(payloads, requests):
    got = _mysql.parse(pa.array(payloads, pa.binary()), requests)
    rows = [dict(zip(ref.FIELDS, r)) for r in zip(*(got[f].tolist() for f in ref.FIELDS))]
    assert rows == ref.parse(payloads, requests)
    return rows


def test_text_query_and_responses():
    q = b"SELECT * FROM t WHERE id = 7"
    rows = parse([packet(0, b"\x03" + q), packet(1, b"\x00\x01\x00\x02\x00\x00\x00"),
                  packet(1, err(1146, b"Table 'db.t' doesn't exist")), packet(1, b"\x02") + packet(2, b"\x03def")],
                 [True, False, False, False])
    assert (rows[0]["kind"], rows[0]["sql_len"]) == (_mysql.COM_QUERY, len(q))
    assert (rows[1]["kind"], rows[1]["affected_rows"]) == (_mysql.RESP_OK, 1)
    assert (rows[2]["kind"], rows[2]["err_code"], rows[2]["msg_len"]) == (_mysql.RESP_ERR, 1146, 26)
    assert (rows[3]["kind"], rows[3]["columns"], len(rows)) == (_mysql.RESP_RESULTSET, 2, 4)


def test_prepared_statement_exchange():
    prepare_ok = b"\x00" + struct.pack("<IHHxH", 42, 1, 1, 0)
    rows = parse([packet(0, b"\x16SELECT ? FROM dual"), packet(1, prepare_ok),
                  packet(0, b"\x19" + struct.pack("<I", 41)) + packet(0, b"\x17" + struct.pack("<IBI", 42, 0, 1))],
                 [True, False, True])
    assert rows[1]["stmt_id"] == 42
    assert [(r["kind"], r["stmt_id"]) for r in rows[2:]] == [(0x19, 41), (_mysql.COM_STMT_EXECUTE, 42)]


def test_cut_and_not_mysql():
    rows = parse([packet(0, b"\x03SELECT " + b"x" * 100)[:50], b"GET / HTTP/1.1\r\n"], [True, True])
    assert [(r["complete"], r["valid"]) for r in rows] == [(0, 1), (0, 0)]


bodies = st.one_of(
    st.binary(max_size=40).map(lambda b: b"\x03" + b), st.binary(max_size=12).map(lambda b: b"\x17" + b),
    st.builds(lambda c, m: err(c, m), st.integers(0, 65535), st.binary(max_size=20)),
    st.sampled_from([b"\x00\x00\x00\x02\x00\x00\x00", b"\x00\xfc\x10\x27\x00\x02\x00\x00\x00", b"\xfe\x00\x00\x02\x00",
                     b"\x05", b"\xfb", b"\xfc\x00\x01", b"\xff", b"\x00"]),
    st.binary(max_size=10))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 3), bodies), max_size=4), max_size=5), st.booleans(),
       st.integers(0, 80))
def test_agrees_with_reference(payloads, request, cut):
    ps = [b"".join(packet(s, b) for s, b in pkts) for pkts in payloads]
    parse(ps + [p[:cut] for p in ps], [request] * (2 * len(ps)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=60), st.booleans()), max_size=6))
def test_fuzz_random_bytes(items):
    parse([p for p, _ in items], [r for _, r in items])

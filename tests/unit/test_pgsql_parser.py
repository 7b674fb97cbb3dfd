"""dkebpf._pgsql.parse against tests/reference/pgsql_ref.py (hypothesis,
fuzz) and pinned exchanges: simple and extended query, ErrorResponse."""
import struct

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _pgsql
from reference import pgsql_ref as ref


def msg(t, body):
    return t + struct.pack(">I", len(body) + 4) + body


def parse(payloads, requests):
    got = _pgsql.parse(pa.array(payloads, pa.binary()), requests)
    rows = [dict(zip(ref.FIELDS, r)) for r in zip(*(got[f].tolist() for f in ref.FIELDS))]
    assert rows == ref.parse(payloads, requests)
    return rows


def text(p, r, field="text"):
    return p[r[field + "_off"]:r[field + "_off"] + r[field + "_len"]]


def test_simple_query_and_error():
    q = msg(b"Q", b"SELECT 1\0")
    resp = (msg(b"T", b"\0\1?column?\0" + bytes(18)) + msg(b"D", b"\0\1\0\0\0\0011") * 3 + msg(b"C", b"SELECT 3\0")
            + msg(b"Z", b"I"))
    error = msg(b"E", b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0") + msg(b"Z", b"I")
    rows = parse([q, resp, error], [True, False, False])
    assert [chr(r["type"]) for r in rows] == ["Q", "C", "Z", "E", "Z"]
    assert text(q, rows[0]) == b"SELECT 1" and text(resp, rows[1]) == b"SELECT 3"
    assert error[rows[3]["code_off"]:rows[3]["code_off"] + 5] == b"42P01"
    assert text(error, rows[3]) == b'relation "nope" does not exist' and rows[4]["status"] == ord("I")


def test_extended_query():
    req = (msg(b"P", b"s1\0SELECT $1\0\0\1\0\0\0\x17") + msg(b"B", b"\0s1\0\0\0\0\1\0\0\0\0015\0\0")
           + msg(b"D", b"P\0") + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b""))
    rows = parse([req, msg(b"1", b"") + msg(b"2", b"") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")], [True, False])
    assert [chr(r["type"]) for r in rows] == ["P", "B", "D", "E", "S", "1", "2", "C", "Z"]
    assert text(req, rows[0], "name") == b"s1" and text(req, rows[0]) == b"SELECT $1"
    assert text(req, rows[1], "name") == b"s1"


def test_cut_and_not_postgres():
    rows = parse([msg(b"Q", b"SELECT " + b"x" * 100 + b"\0")[:40], b"+OK\r\n"], [True, False])
    assert [(r["complete"], r["valid"], r["text_len"]) for r in rows] == [(0, 1, 35), (0, 0, 0)]


types = st.sampled_from([b"Q", b"P", b"B", b"E", b"S", b"C", b"D", b"X", b"H", b"Z", b"I", b"1", b"2", b"T", b"N",
                         b"x"])
cstrings = st.lists(st.binary(max_size=8).map(lambda b: b.replace(b"\0", b"")), max_size=4).map(
    lambda xs: b"\0".join(xs) + b"\0")
bodies = st.one_of(cstrings, st.binary(max_size=16), st.sampled_from([b"SC\0C42P01\0Mboom\0\0", b"I", b""]))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(st.tuples(types, bodies), max_size=5), max_size=4), st.booleans(), st.integers(0, 60))
def test_agrees_with_reference(payloads, request, cut):
    ps = [b"".join(msg(t, b) for t, b in ms) for ms in payloads]
    parse(ps + [p[:cut] for p in ps], [request] * (2 * len(ps)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=60), st.booleans()), max_size=6))
def test_fuzz_random_bytes(items):
    parse([p for p, _ in items], [r for _, r in items])

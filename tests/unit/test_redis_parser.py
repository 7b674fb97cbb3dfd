"""dkebpf._redis.parse against tests/reference/redis_ref.py (hypothesis),
pinned examples of RESP2/RESP3 and pipelining, and a fuzz test."""
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _redis
from reference import redis_ref as ref


def parse(payloads, requests):
    return _redis.parse(pa.array(payloads, pa.binary()), np.array(requests, dtype=bool))


def rows(cols):
    return [dict(zip(_redis.ROW_FIELDS, r)) for r in zip(*(cols[f].tolist() for f in _redis.ROW_FIELDS))]


def agree(payloads, requests):
    got, want = parse(payloads, requests), ref.parse(payloads, requests)
    assert rows(got) == rows(want)
    return rows(got)


def command(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_pipelined_requests_one_row_each_with_command_and_args():
    p = command(b"SET", b"k", b"v") + command(b"GET", b"k") + b"PING hello\r\n"
    r = agree([p], [True])
    assert [(x["nargs"], p[x["word_off"]:x["word_off"] + x["word_len"]]) for x in r] == \
        [(3, b"SET"), (2, b"GET"), (2, b"PING")]
    assert sum(x["length"] for x in r) == len(p) and all(x["complete"] for x in r)


def test_replies_resp2_and_resp3_with_errors():
    p = (b"+OK\r\n-WRONGTYPE Operation against a key\r\n$-1\r\n*2\r\n:1\r\n$3\r\nabc\r\n"
         b"%2\r\n+a\r\n:1\r\n+b\r\n,3.5\r\n~1\r\n#t\r\n|1\r\n+ttl\r\n:3\r\n$1\r\nx\r\n"
         b"!9\r\nERR oops!\r\n=7\r\ntxt:abc\r\n>2\r\n+pubsub\r\n(123\r\n_\r\n")
    r = agree([p], [False])
    assert len(r) == 11 and sum(x["length"] for x in r) == len(p)
    assert [x["error"] for x in r] == [0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert p[r[1]["word_off"]:r[1]["word_off"] + r[1]["word_len"]] == b"WRONGTYPE Operation against a key"


def test_reply_cut_by_capture_and_garbage():
    r = agree([b"+OK\r\n$100\r\nabc", b"HTTP/1.1 200 OK\r\n"], [False, False])
    assert [(x["ev"], x["complete"], x["valid"]) for x in r] == [(0, 1, 1), (0, 0, 1), (1, 0, 0)]


def test_nested_error_in_array_marks_the_reply():
    assert agree([b"*2\r\n+OK\r\n-ERR x\r\n"], [False])[0]["error"] == 1


def test_many_rows_grow_the_output():
    p = b"+OK\r\n" * 400
    r = agree([p, p], [False, False])
    assert len(r) == 800 and r[-1]["ev"] == 1


def test_sliced_and_empty_arrays():
    arr = pa.array([b"+A\r\n", b"+B\r\n", b"+C\r\n"], pa.binary())[1:]
    cols = _redis.parse(arr, np.array([False, False]))
    assert cols["ev"].tolist() == [0, 1] and cols["word_off"].tolist() == [1, 1]
    assert _redis.parse(pa.array([], pa.binary()), np.zeros(0, bool))["ev"].tolist() == []
    big = pa.array([b"+A\r\n"], pa.large_binary())
    assert _redis.parse(big, np.array([False]))["length"].tolist() == [4]


def test_bad_arguments_are_clear_errors():
    import pytest
    with pytest.raises(TypeError, match="pyarrow binary array"):
        _redis.parse([b"x"], np.array([True]))
    with pytest.raises(ValueError, match="1 payloads but 2"):
        _redis.parse(pa.array([b"x"]), np.array([True, False]))


# values as RESP encodes them
scalars = st.one_of(
    st.binary(max_size=20).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
    st.from_regex(rb"\A[a-zA-Z ]{0,12}\Z").map(lambda s: b"+" + s + b"\r\n"),
    st.from_regex(rb"\A[A-Z]{1,8} [a-z ]{0,12}\Z").map(lambda s: b"-" + s + b"\r\n"),
    st.integers(-10**12, 10**12).map(lambda v: b":%d\r\n" % v),
    st.sampled_from([b"_\r\n", b"$-1\r\n", b"*-1\r\n", b"#t\r\n", b",1.5\r\n", b"(99\r\n", b"!3\r\nERR\r\n"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda xs: b"*%d\r\n" % len(xs) + b"".join(xs)),
    st.lists(st.tuples(inner, inner), max_size=3).map(
        lambda kv: b"%%%d\r\n" % len(kv) + b"".join(k + v for k, v in kv)),
    st.lists(inner, max_size=3).map(lambda xs: b">%d\r\n" % len(xs) + b"".join(xs))), max_leaves=12)
requests = st.one_of(st.lists(st.binary(max_size=12), min_size=1, max_size=5).map(lambda a: command(*a)),
                     st.from_regex(rb"\A[A-Z]{1,6}( [a-z0-9]{1,5}){0,3}\Z").map(lambda s: s + b"\r\n"))


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=4), st.integers(0, 400))
def test_replies_agree_with_reference_whole_and_cut(msgs, cut):
    p = b"".join(msgs)
    r = agree([p, p[:cut]], [False, False])
    whole = [x for x in r if x["ev"] == 0]
    assert len(whole) == len(msgs) and all(x["complete"] for x in whole)


@settings(max_examples=300, deadline=None)
@given(st.lists(requests, min_size=1, max_size=4), st.integers(0, 200))
def test_requests_agree_with_reference_whole_and_cut(msgs, cut):
    p = b"".join(msgs)
    r = agree([p, p[:cut]], [True, True])
    assert len([x for x in r if x["ev"] == 0]) == len(msgs)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=64), st.booleans()), max_size=8))
def test_fuzz_random_bytes_never_crash_and_agree(items):
    agree([p for p, _ in items], [r for _, r in items])


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=3), st.integers(0, 300), st.integers(0, 255))
def test_fuzz_one_byte_flipped(msgs, at, byte):
    p = bytearray(b"".join(msgs))
    p[at % len(p)] = byte
    agree([bytes(p)], [False])

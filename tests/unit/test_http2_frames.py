"""dkebpf._http2.parse against tests/reference/http2_ref.py (hypothesis,
fuzz), and a real exchange's frames decoded with dkebpf._hpack, gRPC
trailers included; frame and frame_header (the CRI client's, the tests'
frames) against bytes written out and the reference's rows."""

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _http2
from dkebpf._hpack import HpackDecoder
from dkebpf._http2 import frame
from reference import hpack_ref
from reference import http2_ref as ref


def literal(name, value):  # literal without indexing, new name, Huffman strings
    return b"\x00" + hpack_ref.encode_str(name, True) + hpack_ref.encode_str(value, True)


def parse(payloads):
    got = _http2.parse(pa.array(payloads, pa.binary()))
    rows = [dict(zip(ref.FIELDS, r)) for r in zip(*(got[f].tolist() for f in ref.FIELDS))]
    assert rows == ref.parse(payloads)
    return rows


def test_grpc_exchange_frames_and_headers():
    request = (ref.MAGIC + frame(4, 0, 0, b"") + frame(1, 0x4, 1, b"\x83\x86" + literal(b":path", b"/pkg.Svc/Get")
               + literal(b"content-type", b"application/grpc")) + frame(0, 0x1, 1, b"\0\0\0\0\x02hi"))
    trailers = literal(b"grpc-status", b"5") + literal(b"grpc-message", b"not found")
    response = (frame(1, 0x4, 1, b"\x88" + literal(b"content-type", b"application/grpc"))
                + frame(1, 0x8 | 0x4 | 0x1, 1, bytes([3]) + trailers + b"pad"))
    rows = parse([request, response])
    assert [(r["type"], r["stream"]) for r in rows] == [(0xFF, 0), (4, 0), (1, 1), (0, 1), (1, 1), (1, 1)]
    block = lambda p, r: p[r["block_off"]:r["block_off"] + r["block_len"]]  # noqa: E731
    client, server = HpackDecoder(), HpackDecoder()
    data, off = client.decode(block(request, rows[2]))
    hdrs = {data[off[2 * i]:off[2 * i + 1]]: data[off[2 * i + 1]:off[2 * i + 2]] for i in range(len(off) // 2)}
    assert hdrs[b":method"] == b"POST" and hdrs[b":path"] == b"/pkg.Svc/Get"
    server.decode(block(response, rows[4]))
    data, off = server.decode(block(response, rows[5]))
    hdrs = {data[off[2 * i]:off[2 * i + 1]]: data[off[2 * i + 1]:off[2 * i + 2]] for i in range(len(off) // 2)}
    assert hdrs == {b"grpc-status": b"5", b"grpc-message": b"not found"}


def test_not_http2_and_cut():
    rows = parse([b"GET / HTTP/1.1\r\n\r\n", frame(1, 0x4, 1, b"\x82" * 40)[:20]])
    assert [(r["valid"], r["complete"]) for r in rows] == [(0, 0), (1, 0)]


def test_frame_written_and_its_header_read():
    assert frame(1, 0x5, 3, b"abc") == bytes.fromhex("000003 01 05 00000003") + b"abc"
    assert frame(4, 0x1, 0) == bytes.fromhex("000000 04 01 00000000")
    assert frame(0, 0, 0x80000001, b"x" * 70000)[:9] == bytes.fromhex("011170 00 00 80000001")
    assert _http2.frame_header(bytes.fromhex("011170 00 00 80000001") + b"more") == (70000, 0, 0, 1)
    for short in (b"", b"\0" * 8):
        with pytest.raises(ValueError):
            _http2.frame_header(short)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=9, max_size=9))
def test_frame_header_reads_what_the_rows_read(head):
    """Any header, one the rows take as not HTTP/2 too (frame_header makes
    no sender checks): the type, flags and stream of the reference's row."""
    row = ref.payload(head)[0]
    assert _http2.frame_header(bytearray(head)) == (int.from_bytes(head[:3], "big"), row["type"], row["flags"],
                                                    row["stream"])


frames = st.builds(frame, st.integers(0, 0x12), st.integers(0, 255), st.integers(0, 5), st.binary(max_size=30))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(frames, max_size=5), max_size=4), st.booleans(), st.integers(0, 80))
def test_agrees_with_reference(payloads, preface, cut):
    ps = [(ref.MAGIC if preface else b"") + b"".join(fs) for fs in payloads]
    parse(ps + [p[:cut] for p in ps])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=6))
def test_fuzz_random_bytes(payloads):
    parse(payloads)

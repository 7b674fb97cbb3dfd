"""dkebpf._hpack: RFC 7541 Appendix C examples, and against
tests/reference/hpack_ref.py (hypothesis: random representations over a
connection's successive blocks; fuzz: random bytes fail alike); the span
fields of decode_headers over HTTP/2 frames (blocks split over
CONTINUATIONs) against the reference's headers and tracectx's rules."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _http2
from dkebpf._hpack import ERRORS, STRING_FIELDS, HpackDecoder, decode_headers, strings
from dkebpf._http2 import frame
from reference import hpack_ref as ref
from reference import tracectx_ref


def headers(dec, block):
    data, off = dec.decode(block)
    return [(data[off[2 * i]:off[2 * i + 1]], data[off[2 * i + 1]:off[2 * i + 2]]) for i in range(len(off) // 2)]


def test_rfc7541_c4_requests_with_huffman_share_a_table():
    d = HpackDecoder()
    blocks = ["828684418cf1e3c2e5f23a6ba0ab90f4ff", "828684be5886a8eb10649cbf",
              "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]
    got = [headers(d, bytes.fromhex(b)) for b in blocks]
    assert got[0] == [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                      (b":authority", b"www.example.com")]
    assert got[1][-1] == (b"cache-control", b"no-cache")
    assert got[2][-1] == (b"custom-key", b"custom-value") and got[2][1] == (b":scheme", b"https")
    assert d.table_size == 164  # the RFC's figure after C.4.3


def test_rfc7541_c3_without_huffman_and_errors():
    d = HpackDecoder()
    assert headers(d, bytes.fromhex("828684410f7777772e6578616d706c652e636f6d"))[3] == (
        b":authority", b"www.example.com")
    with pytest.raises(ValueError, match="index 70 not in the tables"):
        HpackDecoder().decode(bytes([0x80 | 70]))
    with pytest.raises(ValueError, match="above"):
        HpackDecoder(max_table_size=100).decode(ref.encode_int(200, 5, 0x20))
    with pytest.raises(ValueError, match="padding"):
        HpackDecoder().decode(bytes([0x00, 0x81, 0x00, 0x81, 0x00]))


names = st.one_of(st.sampled_from([b":method", b":path", b":status", b"content-type", b"grpc-status",
                                   b"grpc-message", b"traceparent"]), st.binary(min_size=1, max_size=12))
values = st.binary(max_size=40)
reps = st.one_of(
    st.tuples(st.just("indexed"), st.integers(1, 70)),
    st.tuples(st.sampled_from(["incremental", "without", "never"]), st.one_of(st.integers(1, 70), names), values,
              st.booleans(), st.booleans()),
    st.tuples(st.just("size"), st.integers(0, 5000)))


def encode(rep):
    kind = rep[0]
    if kind == "indexed":
        return ref.encode_int(rep[1], 7, 0x80)
    if kind == "size":
        return ref.encode_int(rep[1], 5, 0x20)
    _, name, value, hname, hvalue = rep
    prefix, flags = {"incremental": (6, 0x40), "without": (4, 0), "never": (4, 0x10)}[kind]
    if isinstance(name, int):
        head = ref.encode_int(name, prefix, flags)
    else:
        head = ref.encode_int(0, prefix, flags) + ref.encode_str(name, hname)
    return head + ref.encode_str(value, hvalue)


def same(blocks, limit=4096):
    d, r = HpackDecoder(max_table_size=limit), ref.Decoder(max_table_size=limit)
    for block in blocks:
        try:
            want = r.decode(block)
        except ValueError:
            with pytest.raises(ValueError):
                d.decode(block)
            return
        assert headers(d, block) == want
        assert d.table_size == r.table_size


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(reps, max_size=8), max_size=4), st.sampled_from([4096, 300, 65536]))
def test_agrees_with_reference(blocks, limit):
    same([b"".join(encode(x) for x in block) for block in blocks], limit)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_fuzz_random_bytes(blocks):
    same(blocks)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 10**6), st.sampled_from(["keep", "flip", "cut", "pad"]))
def test_huffman_any_bytes_and_damage(value, at, damage):
    """Huffman values of any bytes (codes of 5 to 30 bits: the two-symbol
    table and the state machine it leaves long codes to), intact or
    damaged (a bit flipped, the last byte cut, a padding byte added)."""
    data = bytearray(ref.huffman_encode(value))
    if damage == "flip" and data:
        data[at % len(data)] ^= 1 << (at % 8)
    elif damage == "cut" and data:
        data = data[:-1]
    elif damage == "pad":
        data.append(0xFF if at % 2 else 0xFE)
    s = ref.encode_int(len(data), 7, 0x80) + bytes(data)
    same([ref.encode_int(0, 4, 0) + ref.encode_str(b"x-v", False) + bytes(s)])


# -- decode_headers: the span fields of HTTP/2 frames' header blocks, no Python object per header

def frames_of(block, cuts, stream=1):
    """HEADERS + CONTINUATIONs carrying `block` cut at `cuts`, END_HEADERS on the last."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(block)), len(block)]
    parts = [block[a:b] for a, b in zip(bounds, bounds[1:])]
    return b"".join(frame(1 if k == 0 else 9, 0x4 if k == len(parts) - 1 else 0, stream, part)
                    for k, part in enumerate(parts))


def records(payloads, which_of=lambda rows: np.zeros(len(rows), np.int32), decoders=None):
    arr = pa.array(payloads, pa.binary())
    rows = _http2.parse(arr)
    decoders = decoders or [HpackDecoder()]
    recs, arena = decode_headers(arr, rows, which_of(rows), decoders)
    return rows, recs, arena


def field_dicts(recs, arena, where):
    cols = {f: strings(recs, arena, f).to_pylist() for f in STRING_FIELDS}
    out = []
    for i in np.flatnonzero(where):
        d = {f: cols[f][i] for f in STRING_FIELDS}
        d.update({k: int(recs[k][i]) for k in ("status", "grpc_status", "nheaders", "trace_hi", "trace_lo", "parent",
                                                 "sampled", "source")})
        out.append(d)
    return out


def lit(name, value, huff=True, flags=0):  # literal, new name: without indexing (0), incremental (0x40)
    prefix = 6 if flags == 0x40 else 4
    return ref.encode_int(0, prefix, flags) + ref.encode_str(name, huff) + ref.encode_str(value, huff)


TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_decode_headers_grpc_call_request_response_trailers():
    request = (b"\x83\x86" + lit(b":path", b"/pkg.Svc/Get", flags=0x40) + lit(b":authority", b"svc-b:50051", flags=0x40)
               + lit(b"content-type", b"application/grpc", flags=0x40) + lit(b"te", b"trailers")
               + lit(b"Traceparent", TRACEPARENT))
    again = b"\x83\x86\xc0\xbf\xbe" + lit(b"x-datadog-trace-id", b"123") + lit(b"x-datadog-parent-id", b"456")
    response = b"\x88" + lit(b"content-type", b"application/grpc")
    trailers = lit(b"grpc-status", b"5") + lit(b"grpc-message", b"not found") + lit(b"grpc-status", b"0")
    client = frames_of(request, [3, 20]) + frames_of(again, [], stream=3)
    server = frames_of(response, []) + frames_of(trailers, [7])
    rows, recs, arena = records([client, server], lambda rows: rows["ev"].astype(np.int32),
                                [HpackDecoder(), HpackDecoder()])
    ends = recs["state"] == 1
    assert (recs["state"] != 2).all()
    assert rows["type"][ends].tolist() == [9, 1, 1, 9]  # the frames with END_HEADERS
    got = field_dicts(recs, arena, ends)
    assert [g["method"] for g in got] == [b"POST", b"POST", None, None]
    assert [g["path"] for g in got] == [b"/pkg.Svc/Get", b"/pkg.Svc/Get", None, None]
    assert got[1]["authority"] == b"svc-b:50051" and got[1]["content_type"] == b"application/grpc"
    assert (got[0]["trace_hi"], got[0]["trace_lo"], got[0]["parent"], got[0]["sampled"], got[0]["source"]) == (
        0x0af7651916cd43dd, 0x8448eb211c80319c, 0xb7ad6b7169203331, 1, 1)
    assert (got[1]["trace_lo"], got[1]["parent"], got[1]["source"]) == (123, 456, 4)
    assert (got[2]["status"], got[2]["grpc_status"], got[2]["content_type"]) == (200, -1, b"application/grpc")
    assert (got[3]["grpc_status"], got[3]["grpc_message"], got[3]["nheaders"]) == (5, b"not found", 3)


def test_decode_headers_broken_connections_stop():
    # mid-stream: an index the table never got; then every later block refuses
    ok = frames_of(b"\x82", [])
    rows, recs, _ = records([frames_of(bytes([0x80 | 70]), []) + ok, ok])
    assert recs["state"].tolist() == [2, 2, 2]
    assert [ERRORS[e] for e in recs["error"]] == ["index not in the tables"] + [ERRORS[-1]] * 2
    # a CONTINUATION first (its HEADERS was not captured); a block cut by the capture
    rows, recs, _ = records([frame(9, 0x4, 1, b"\x82")])
    assert ERRORS[recs["error"][0]] == "CONTINUATION without the HEADERS it continues"
    rows, recs, _ = records([frame(1, 0x4, 1, b"\x82\x84\x86")[:11]])
    assert ERRORS[recs["error"][0]] == "header block cut by the capture"
    # decode() says it too
    d = HpackDecoder()
    with pytest.raises(ValueError, match="index 70"):
        d.decode(bytes([0x80 | 70]))
    assert d.error.startswith("index 70")
    with pytest.raises(ValueError, match="earlier block"):
        d.decode(b"\x82")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(reps, max_size=8), st.lists(st.integers(1, 60), max_size=3)), max_size=5),
       st.sampled_from([4096, 300, 65536]), st.integers(1, 3))
def test_decode_headers_agrees_with_reference(blocks, limit, per_payload):
    raw = [b"".join(encode(x) for x in block) for block, _ in blocks]
    r, want, broken = ref.Decoder(max_table_size=limit), [], False
    for block in raw:
        try:
            assert not broken
            want.append(ref.span_fields(r.decode(block)))
        except (ValueError, AssertionError):
            want.append("error")
            broken = True
    framed = [frames_of(block, cuts, stream=2 * k + 1) for k, (block, (_, cuts)) in enumerate(zip(raw, blocks))]
    payloads = [b"".join(framed[i:i + per_payload]) for i in range(0, len(framed), per_payload)]
    rows, recs, arena = records(payloads, decoders=[HpackDecoder(max_table_size=limit)])
    ends = recs["state"] != 0
    got = field_dicts(recs, arena, ends)
    got = ["error" if s == 2 else g for s, g in zip(recs["state"][ends], got)]
    assert got == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.just(TRACEPARENT), st.binary(max_size=60)), min_size=1, max_size=6),
       st.lists(st.sampled_from(tracectx_ref.NAMES), min_size=1, max_size=6))
def test_decode_headers_trace_context_as_tracectx(values, names):
    headers = list(zip(names, values))
    block = b"".join(lit(n, v) for n, v in headers)
    _, recs, arena = records([frames_of(block, [])])
    assert field_dicts(recs, arena, recs["state"] == 1)[0] == ref.span_fields(headers)

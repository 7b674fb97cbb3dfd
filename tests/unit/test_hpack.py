"""dkebpf._hpack.HpackDecoder: RFC 7541 Appendix C examples, and against
tests/reference/hpack_ref.py (hypothesis: random representations over a
connection's successive blocks; fuzz: random bytes fail alike)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf._hpack import HpackDecoder
from reference import hpack_ref as ref


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

"""dkebpf._bashline.decode_lines against tests/reference/bashline_ref.py,
and the UTF-8 rules pinned with examples."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _bashline
from dkebpf._records import BASH_CAPTURE_MAX, BASH_LINE_DTYPE, BASH_TRUNCATED
from reference import bashline_ref as ref


def records(lines):
    """bash_line records as the BPF program writes them: up to 480 bytes
    captured, the truncated flag when the line was longer."""
    recs = np.zeros(len(lines), BASH_LINE_DTYPE)
    for r, line in zip(recs, lines):
        cap = line[:BASH_CAPTURE_MAX]
        r["line"] = cap + b"\0" * (BASH_CAPTURE_MAX + 1 - len(cap))
        r["captured"] = len(cap)
        r["line_len"] = len(line)
        r["flags"] = BASH_TRUNCATED if len(line) > BASH_CAPTURE_MAX else 0
    return recs


def decode(lines):
    cmd, kept = _bashline.decode_lines(records(lines))
    return cmd.to_pylist(), kept.tolist()


def test_plain_and_unicode_lines():
    lines = [b"echo hello", "printf '%s' 'grüße, 世界 🎉'".encode(), b"a=1 b=\"2,3\" \\x"]
    assert decode(lines) == ([x.decode() for x in lines], [len(x) for x in lines])


def test_empty_batch():
    cmd, kept = _bashline.decode_lines(np.zeros(0, BASH_LINE_DTYPE))
    assert cmd.to_pylist() == [] and kept.tolist() == []


@pytest.mark.parametrize("char", ["é", "€", "🎉"])
@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_truncated_line_is_cut_at_a_character_boundary(char, shift):
    line = b"x" * shift + char.encode() * 300  # far past 480 bytes
    (text,), (kept,) = decode([line])
    w = len(char.encode())
    whole = (BASH_CAPTURE_MAX - shift) // w
    assert text == "x" * shift + char * whole
    assert kept == shift + whole * w
    assert kept > BASH_CAPTURE_MAX - w


def test_line_of_exactly_480_bytes_ending_in_a_character_is_whole():
    line = b"x" * (BASH_CAPTURE_MAX - 2) + "é".encode()
    assert decode([line]) == ([line.decode()], [BASH_CAPTURE_MAX])


def test_invalid_bytes_become_replacement_characters():
    lines = [b"ls \xff\xfe", b"cat caf\xe9", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82 x", b"\xc0\xaf"]
    texts, kept = decode(lines)
    assert texts == [x.decode("utf-8", "replace") for x in lines]
    assert texts[0] == "ls \ufffd\ufffd" and texts[4] == "\ufffd x"
    assert kept == [len(x) for x in lines]


def test_an_untruncated_line_keeps_an_incomplete_end_as_replacement():
    # only a line cut by the capture limit loses its last partial character
    assert decode([b"echo \xe2\x82"]) == (["echo \ufffd"], [7])


def test_captured_above_the_limit_is_clamped():
    recs = records([b"y" * 600])
    recs["captured"] = 65535
    cmd, kept = _bashline.decode_lines(recs)
    assert kept.tolist() == [BASH_CAPTURE_MAX] and cmd.to_pylist() == ["y" * BASH_CAPTURE_MAX]


def test_wrong_record_size_is_refused():
    with pytest.raises(ValueError, match="bash_line"):
        _bashline.decode_lines(np.zeros(3, np.uint64))


def test_slices_and_non_contiguous_input():
    recs = records([b"a", b"bb", b"ccc", b"dddd"])[::2]
    cmd, kept = _bashline.decode_lines(recs)
    assert cmd.to_pylist() == ["a", "ccc"] and kept.tolist() == [1, 3]


def assert_same(lines):
    recs = records(lines)
    cmd, kept = _bashline.decode_lines(recs)
    rcmd, rkept = ref.decode_lines(recs)
    cmd.validate(full=True)
    assert cmd.to_pylist() == rcmd.to_pylist()
    assert kept.tolist() == rkept.tolist()


utf8_heavy = st.lists(st.sampled_from(["a", " ", "é", "€", "🎉", "\n", "\"", "\\", "\x01"]),
                      max_size=400).map(lambda cs: "".join(cs).encode())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=600), utf8_heavy,
                          st.text(max_size=300).map(str.encode)), max_size=20))
def test_matches_reference(lines):
    assert_same(lines)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=470, max_size=500), min_size=1, max_size=8))
def test_matches_reference_around_the_limit(lines):
    assert_same(lines)


def test_random_bytes_fuzz():
    rnd = np.random.default_rng(7)
    recs = np.frombuffer(rnd.integers(0, 256, 512 * 2000, dtype=np.uint8).tobytes(), BASH_LINE_DTYPE).copy()
    cmd, kept = _bashline.decode_lines(recs)  # arbitrary captured/flags: never crashes, always valid UTF-8
    cmd.validate(full=True)
    rcmd, rkept = ref.decode_lines(recs)
    assert cmd.to_pylist() == rcmd.to_pylist() and kept.tolist() == rkept.tolist()

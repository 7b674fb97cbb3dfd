"""Pure-Python reference of dkebpf._bashline.decode_lines, for tests only."""
import numpy as np
import pyarrow as pa

from dkebpf._records import BASH_CAPTURE_MAX, BASH_TRUNCATED


def seq_len(lead):
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def cut_utf8(b):
    """b without an incomplete character at its end (cut by a size limit)."""
    n = len(b)
    k = n - 1
    while k >= max(0, n - 3) and b[k] & 0xC0 == 0x80:
        k -= 1
    if k >= max(0, n - 4) and seq_len(b[k]) > n - k:
        return b[:k]
    return b


def decode_line(raw, captured, flags):
    """(text, kept bytes) of one record's line bytes."""
    b = bytes(raw)[:min(captured, BASH_CAPTURE_MAX)]
    if flags & BASH_TRUNCATED:
        b = cut_utf8(b)
    return b.decode("utf-8", "replace"), len(b)


def decode_lines(records):
    out = [decode_line(r["line"], int(r["captured"]), int(r["flags"])) for r in records]
    return (pa.array([t for t, _ in out], pa.string()),
            np.array([k for _, k in out], dtype=np.uint32))

"""Lines bash read (bash_line records, bpf/include/bash.h) -> an Arrow
string column of valid UTF-8, without a Python object per line.

A line is bytes as the terminal sent them: usually UTF-8, but nothing
guarantees it. Per record, with the GIL released:

* only the ``captured`` bytes count;
* a truncated line (BASH_F_TRUNCATED) may end inside a character cut by
  the capture limit: an incomplete last sequence -- a lead byte
  0xC2..0xF4 followed, within the last four bytes, by fewer continuation
  bytes (0x80..0xBF) than it announces -- is dropped;
* what is left is decoded like Python's ``bytes.decode("utf-8",
  "replace")``: each maximal ill-formed subpart (Unicode 15, section 3.9,
  "U+FFFD Substitution of Maximal Subparts") becomes one U+FFFD.

``tests/reference/bashline_ref.py`` holds the same rules in plain Python;
the hypothesis tests in ``tests/unit/test_bashline.py`` hold both equal.

Public API::

    decode_lines(records) -> (cmd: pyarrow.StringArray, kept: numpy uint32)

``kept`` is, per record, how many of the line's bytes the command shows
(after the cut), for the "truncated" note in the message.
"""
from libc.stdint cimport int32_t, uint8_t, uint32_t

import numpy as np
import pyarrow as pa
cimport numpy as cnp

from bash cimport bash_line, BASH_LINE_MAX, BASH_F_TRUNCATED

cnp.import_array()

__all__ = ["decode_lines"]


cdef inline int _seq_len(uint8_t lead) noexcept nogil:
    """Bytes a well-formed sequence starting with lead has; 0 when lead can
    start none (a continuation byte, 0xC0, 0xC1, 0xF5..0xFF)."""
    if lead < 0x80:
        return 1
    if lead < 0xC2:
        return 0
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    if lead < 0xF5:
        return 4
    return 0


cdef inline Py_ssize_t _cut(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """n without an incomplete character at the end."""
    cdef Py_ssize_t k = n - 1
    while k >= 0 and k >= n - 3 and (p[k] & 0xC0) == 0x80:
        k -= 1
    if k >= 0 and k >= n - 4:
        if _seq_len(p[k]) > n - k:
            return k
    return n


cdef inline bint _cont_ok(uint8_t lead, Py_ssize_t pos, uint8_t b) noexcept nogil:
    """May b stand at position pos (1..3) of a sequence led by lead? The
    second byte's range is narrower after E0, ED, F0 and F4 (no overlong
    forms, no surrogates, nothing above U+10FFFF: Unicode Table 3-7)."""
    if pos == 1:
        if lead == 0xE0:
            return 0xA0 <= b <= 0xBF
        if lead == 0xED:
            return 0x80 <= b <= 0x9F
        if lead == 0xF0:
            return 0x90 <= b <= 0xBF
        if lead == 0xF4:
            return 0x80 <= b <= 0x8F
    return 0x80 <= b <= 0xBF


cdef Py_ssize_t _decode(const uint8_t *p, Py_ssize_t n, uint8_t *out) noexcept nogil:
    """Write p[:n] as valid UTF-8 to out (room for 3 * n); returns the length."""
    cdef Py_ssize_t i = 0, o = 0, need, j
    cdef uint8_t lead
    while i < n:
        lead = p[i]
        if lead < 0x80:
            out[o] = lead
            o += 1
            i += 1
            continue
        need = _seq_len(lead)
        j = 1
        while j < need and i + j < n and _cont_ok(lead, j, p[i + j]):
            j += 1
        if need and j == need:
            while j > 0:
                out[o] = p[i]
                o += 1
                i += 1
                j -= 1
        else:
            # the maximal subpart p[i:i+j] (at least the lead) -> U+FFFD
            out[o] = 0xEF
            out[o + 1] = 0xBF
            out[o + 2] = 0xBD
            o += 3
            i += j
    return o


def decode_lines(records):
    """(cmd StringArray, kept uint32 array) for an array of bash_line records."""
    records = np.ascontiguousarray(records)
    if records.dtype.itemsize != sizeof(bash_line):
        raise ValueError(f"records of {records.dtype.itemsize} bytes, bash_line has {sizeof(bash_line)}")
    cdef Py_ssize_t n = len(records), i, total = 0, m
    cdef const bash_line *recs = <const bash_line *>cnp.PyArray_DATA(records)
    kept = np.empty(n, dtype=np.uint32)
    offsets = np.empty(n + 1, dtype=np.int32)
    cdef uint32_t[::1] kv = kept
    cdef int32_t[::1] ov = offsets
    with nogil:
        for i in range(n):
            m = recs[i].captured if recs[i].captured <= BASH_LINE_MAX else BASH_LINE_MAX
            if recs[i].flags & BASH_F_TRUNCATED:
                m = _cut(<const uint8_t *>recs[i].line, m)
            kv[i] = <uint32_t>m
            total += m
    # 3 output bytes per input byte at most (one invalid byte -> U+FFFD)
    data = np.empty(max(3 * total, 1), dtype=np.uint8)
    cdef uint8_t *dp = <uint8_t *>cnp.PyArray_DATA(data)
    cdef Py_ssize_t o = 0
    with nogil:
        for i in range(n):
            ov[i] = <int32_t>o
            o += _decode(<const uint8_t *>recs[i].line, kv[i], dp + o)
        ov[n] = <int32_t>o
    cmd = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data[:o]))
    return cmd, kept

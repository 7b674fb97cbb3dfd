"""Lines bash read (bash_line records, bpf/include/bash.h) -> an Arrow
string column of valid UTF-8, without a Python object per line.

A line is bytes as the terminal sent them: usually UTF-8, but nothing
guarantees it. Per record, with the GIL released:

* only the ``captured`` bytes count;
* a truncated line (BASH_F_TRUNCATED) may end inside a character cut by
  the capture limit: an incomplete last sequence -- a lead byte
  0xC2..0xF4 followed, within the last four bytes, by fewer continuation
  bytes (0x80..0xBF) than it announces -- is dropped;
* what is left is made valid by the project's one UTF-8 policy
  (ext/includes/utf8.pxd): like Python's ``bytes.decode("utf-8",
  "replace")``, each maximal ill-formed subpart becomes one U+FFFD.

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
from utf8 cimport utf8_replace_invalid, utf8_seq_len

cnp.import_array()

__all__ = ["decode_lines"]


cdef inline Py_ssize_t _cut(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """n without an incomplete character at the end."""
    cdef Py_ssize_t k = n - 1
    while k >= 0 and k >= n - 3 and (p[k] & 0xC0) == 0x80:
        k -= 1
    if k >= 0 and k >= n - 4:
        if utf8_seq_len(p[k]) > n - k:
            return k
    return n


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
            o += utf8_replace_invalid(<const uint8_t *>recs[i].line, kv[i], dp + o)
        ov[n] = <int32_t>o
    cmd = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data[:o]))
    return cmd, kept

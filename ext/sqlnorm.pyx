"""SQL text -> the ``resource`` of a MySQL or PostgreSQL span: literals
replaced by ``?``, comments dropped, whitespace collapsed, so statements
that differ only in their values group together. No Python object per
statement: the SQL is read where the protocol parser found it inside the
captured payloads, and the result is one Arrow string array.

Rules, one left-to-right scan (no SQL grammar; what is not a literal is
copied):

* ``'...'`` strings (``''`` and backslash escapes inside) -> ``?``; with
  an ``E N X B`` prefix (``E'\\n'``, ``X'ff'``) the prefix goes too; a
  string cut by the capture -> ``?`` to the end;
* PostgreSQL dollar quotes ``$$...$$`` / ``$tag$...$tag$`` -> ``?``;
* numbers not inside a word (``42``, ``3.14``, ``1e-3``, ``0x1F``) ->
  ``?``; ``$1`` and ``t2`` stay (a digit after a word character is part of
  the word);
* ``"..."`` and backquoted identifiers are copied as they are;
* ``-- ...``, ``# ...`` (MySQL) and ``/* ... */`` comments -> one space;
* runs of whitespace -> one space, none at either end.

Bytes that are not UTF-8 then follow the project's one UTF-8 policy
(ext/includes/utf8.pxd). ``tests/reference/sqlnorm_ref.py`` holds the
same rules in plain Python.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t

import numpy as np
import pyarrow as pa
cimport numpy as cnp

from payloads cimport payload_view, view_payloads, payload_start
from utf8 cimport utf8_replace_invalid

cnp.import_array()

__all__ = ["normalize"]


cdef inline bint _word(uint8_t c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95 or c == 36 or c >= 0x80


cdef inline bint _space(uint8_t c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13 or c == 11 or c == 12


cdef inline bint _digit(uint8_t c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint _hexdigit(uint8_t c) noexcept nogil:
    return _digit(c) or (65 <= c <= 70) or (97 <= c <= 102)


cdef inline Py_ssize_t _emit(uint8_t *o, Py_ssize_t k, uint8_t c, bint *pending_space) noexcept nogil:
    """Append c, after one space if whitespace came before and o is not empty."""
    if pending_space[0]:
        if k > 0:
            o[k] = 32
            k += 1
        pending_space[0] = False
    o[k] = c
    return k + 1


cdef Py_ssize_t _dollar_tag(const uint8_t *p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Length of a dollar-quote tag ``$tag$`` at p[i] (tag [A-Za-z_]*), 0 if none."""
    cdef Py_ssize_t j = i + 1
    while j < n and ((65 <= p[j] <= 90) or (97 <= p[j] <= 122) or p[j] == 95):
        j += 1
    if j < n and p[j] == 36:
        return j - i + 1
    return 0


# bytes that start nothing (not whitespace, a quote, a literal's prefix
# letter, $, a digit, nor a comment's first byte): copied as they come, one
# table load instead of every test of the scan (most of a statement's bytes)
cdef uint8_t PLAIN[256]
PLAIN[:] = [0 if chr(c) in " \t\n\r\x0b\x0c'eEnNxXbB$0123456789\"`-#/" else 1 for c in range(256)]


cdef Py_ssize_t normalize_sql(const uint8_t *p, Py_ssize_t n, uint8_t *o) noexcept nogil:
    """Normalized p[:n] into o (room for n bytes); returns its length."""
    cdef Py_ssize_t i = 0, k = 0, j, t
    cdef bint pending = False
    cdef uint8_t c, q
    while i < n:
        c = p[i]
        if PLAIN[c]:
            k = _emit(o, k, c, &pending)
            i += 1
        elif _space(c):
            pending = True
            i += 1
        elif c == 39 or ((c == 69 or c == 101 or c == 78 or c == 110 or c == 88 or c == 120 or c == 66
                          or c == 98) and i + 1 < n and p[i + 1] == 39 and (i == 0 or not _word(p[i - 1]))):
            if c != 39:
                i += 1
            i += 1
            while i < n:
                if p[i] == 92:  # backslash escapes the next byte
                    i += 2
                elif p[i] == 39:
                    if i + 1 < n and p[i + 1] == 39:
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
            k = _emit(o, k, 63, &pending)
        elif c == 36 and (i == 0 or not _word(p[i - 1])) and _dollar_tag(p, i, n):
            t = _dollar_tag(p, i, n)
            j = i + t
            while j + t <= n:
                if p[j] == 36 and _dollar_tag(p, j, n) == t and _same(p, i, j, t):
                    break
                j += 1
            i = j + t if j + t <= n else n
            k = _emit(o, k, 63, &pending)
        elif _digit(c) and (i == 0 or not (_word(p[i - 1]) or p[i - 1] == 46)):
            if c == 48 and i + 2 < n and (p[i + 1] == 120 or p[i + 1] == 88) and _hexdigit(p[i + 2]):
                i += 2
                while i < n and _hexdigit(p[i]):
                    i += 1
            else:
                while i < n and _digit(p[i]):
                    i += 1
                if i < n and p[i] == 46:
                    i += 1
                    while i < n and _digit(p[i]):
                        i += 1
                if i + 1 < n and (p[i] == 101 or p[i] == 69) and (_digit(p[i + 1]) or (
                        (p[i + 1] == 43 or p[i + 1] == 45) and i + 2 < n and _digit(p[i + 2]))):
                    i += 2
                    while i < n and _digit(p[i]):
                        i += 1
            k = _emit(o, k, 63, &pending)
        elif c == 34 or c == 96:  # "identifier", `identifier`
            q = c
            k = _emit(o, k, c, &pending)
            i += 1
            while i < n:
                o[k] = p[i]
                k += 1
                i += 1
                if p[i - 1] == q:
                    break
        elif (c == 45 and i + 1 < n and p[i + 1] == 45) or c == 35:
            while i < n and p[i] != 10:
                i += 1
            pending = True
        elif c == 47 and i + 1 < n and p[i + 1] == 42:
            i += 2
            while i < n and not (p[i] == 42 and i + 1 < n and p[i + 1] == 47):
                i += 1
            i = i + 2 if i < n else n
            pending = True
        else:
            k = _emit(o, k, c, &pending)
            i += 1
    return k


cdef inline bint _same(const uint8_t *p, Py_ssize_t a, Py_ssize_t b, Py_ssize_t t) noexcept nogil:
    cdef Py_ssize_t x
    for x in range(t):
        if p[a + x] != p[b + x]:
            return False
    return True


def normalize(payloads, ev, off, length):
    """pyarrow StringArray: for each row r the normalized SQL found at
    payloads[ev[r]][off[r]:off[r] + length[r]] (clipped to the payload)."""
    cdef payload_view pv = view_payloads(payloads)
    cdef const uint32_t[::1] evv = np.ascontiguousarray(ev, np.uint32)
    cdef const uint32_t[::1] offv = np.ascontiguousarray(off, np.uint32)
    cdef const uint32_t[::1] lenv = np.ascontiguousarray(length, np.uint32)
    cdef Py_ssize_t rows = evv.shape[0], r, total = 0, k, o = 0
    cdef int64_t a, b, s, e
    if offv.shape[0] != rows or lenv.shape[0] != rows:
        raise ValueError("normalize: ev, off and length of different lengths")
    for r in range(rows):
        if evv[r] >= pv.n:
            raise ValueError(f"normalize: row {r} points at payload {evv[r]} of {pv.n}")
        total += lenv[r]
    scratch = np.empty(max(total, 1), np.uint8)
    data = np.empty(3 * total, np.uint8)
    offsets = np.empty(rows + 1, np.int32)
    if 3 * total > 0x7fffffff:
        raise ValueError("normalize: more than 2 GiB of SQL in one call")
    cdef uint8_t[::1] sv = scratch, dv = data
    cdef int32_t[::1] ov = offsets
    with nogil:
        for r in range(rows):
            ov[r] = <int32_t>o
            a = payload_start(&pv, evv[r])
            b = payload_start(&pv, evv[r] + 1)
            s = a + offv[r]
            e = s + lenv[r]
            if s > b:
                s = b
            if e > b:
                e = b
            k = normalize_sql(pv.data + s, e - s, &sv[0])
            o += utf8_replace_invalid(&sv[0], k, &dv[o])
        ov[rows] = <int32_t>o
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(data[:o]))

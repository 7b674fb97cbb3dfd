"""Redis messages (RESP2 and RESP3) in captured payloads -> one row per
message, without a Python object per message.

A payload is what one read or write call carried on a connection, cut at
the capture limit; the caller says whether it holds requests (client to
server) or replies, since a RESP array is valid both ways. Pipelining puts
several messages in one payload: each becomes a row, in order.

Grammar (redis.io/docs/reference/protocol-spec): a message is one value;
a value is a type byte, a line ending in CRLF, and for some types more:

* ``$`` bulk string, ``!`` bulk error, ``=`` verbatim string: ``<len>``
  then len bytes and CRLF (``$-1`` is RESP2's null, no body);
* ``*`` array, ``~`` set, ``>`` push: ``<count>`` values follow (``*-1``
  null); ``%`` map: 2*count values; ``|`` attribute: 2*count values and
  then the value it annotates;
* ``+ - : _ , # (`` a single line.

Nesting is walked with a count of values still owed, not recursion, so a
hostile payload costs time linear in its length and no stack. A request may
also be an inline command (``PING\\r\\n``): words separated by spaces.

Per row: ``ev`` (payload index), ``off``/``length`` (bytes of the message;
length 0 when the capture cut it), ``complete``, ``error`` (a ``-`` or
``!`` reply, or an error nested in an array), ``nargs`` (a request's
words), ``word_off``/``word_len`` (the command name of a request; the text
of a simple string or error reply). A payload that is not RESP gives one
row with ``valid`` 0 and stops there.

``tests/reference/redis_ref.py`` holds the same rules in plain Python.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t

import numpy as np
cimport numpy as cnp

from payloads cimport parse_rows
from dk_common cimport offset_of

cnp.import_array()

__all__ = ["parse", "ROW_FIELDS", "ROW_DTYPE"]

ROW_FIELDS = ("ev", "off", "length", "complete", "valid", "error", "nargs", "word_off", "word_len")

# A message may announce at most this many nested values: more is not
# Redis talking (the server caps multibulk length at 1024*1024*1024 but
# no real reply nests like that within one 2 KiB capture).
DEF MAX_OWED = 1 << 24

cdef struct row_t:
    uint32_t ev, off, length, nargs, word_off, word_len
    uint8_t complete, valid, error


cdef inline int64_t _line_end(const uint8_t *p, int64_t i, int64_t n) noexcept nogil:
    """Index of the CR of the CRLF ending the line that starts at i; -1 if
    the payload ends first."""
    while i + 1 < n:
        if p[i] == 13 and p[i + 1] == 10:
            return i
        i += 1
    return -1


cdef inline bint _int(const uint8_t *p, int64_t a, int64_t b, int64_t *out) noexcept nogil:
    """p[a:b] as a decimal integer (optional '-'); False if not one."""
    cdef int64_t v = 0
    cdef bint neg = False
    if a < b and p[a] == 45:
        neg = True
        a += 1
    if a >= b or b - a > 18:
        return False
    while a < b:
        if p[a] < 48 or p[a] > 57:
            return False
        v = v * 10 + (p[a] - 48)
        a += 1
    out[0] = -v if neg else v
    return True


cdef inline bint _type_byte(uint8_t t) noexcept nogil:
    return (t == 36 or t == 33 or t == 61 or t == 42 or t == 126 or t == 62 or t == 37 or t == 124
            or t == 43 or t == 45 or t == 58 or t == 95 or t == 44 or t == 35 or t == 40)


cdef int64_t _message(const uint8_t *p, int64_t i, int64_t n, bint request, row_t *r) noexcept nogil:
    """Parse the message starting at p[i]; fill r; return the index after
    it, -1 when cut by the capture, -2 when not RESP."""
    cdef int64_t owed = 1, end, v
    cdef uint8_t t
    cdef bint top = True
    r.nargs = 0
    r.word_off = 0
    r.word_len = 0
    r.error = 0
    if request and p[i] != 42:  # inline command: words up to CRLF
        end = _line_end(p, i, n)
        v = i
        while v < (end if end >= 0 else n) and p[v] != 32:
            if p[v] < 33 or p[v] > 126:
                return -2
            v += 1
        if v == i:
            return -2
        r.word_off = <uint32_t>i
        r.word_len = <uint32_t>(v - i)
        if end < 0:
            return -1
        r.nargs = 1
        while v < end:
            if p[v] == 32 and v + 1 < end and p[v + 1] != 32:
                r.nargs += 1
            v += 1
        return end + 2
    while owed > 0:
        if i >= n:
            return -1
        t = p[i]
        end = _line_end(p, i + 1, n)
        if end < 0:
            # cut inside the header line: only plausible type bytes count
            if not _type_byte(t):
                return -2
            return -1
        owed -= 1
        if t == 36 or t == 33 or t == 61:  # $ ! =
            if request and t != 36:
                return -2
            if not _int(p, i + 1, end, &v) or v < -1:
                return -2
            if t == 33:
                r.error = 1
            if v == -1:
                i = end + 2
            else:
                if request and r.nargs == 0 and not top:
                    r.word_off = <uint32_t>(end + 2)
                    r.word_len = <uint32_t>(v if end + 2 + v <= n else n - end - 2)
                if end + 2 + v + 2 > n:
                    return -1
                if p[end + 2 + v] != 13 or p[end + 3 + v] != 10:
                    return -2
                i = end + 2 + v + 2
        elif t == 42 or t == 126 or t == 62 or t == 37 or t == 124:  # * ~ > % |
            if (request and not top) or not _int(p, i + 1, end, &v) or v < -1 or v > MAX_OWED:
                return -2
            if v > 0:
                if t == 37:
                    v *= 2
                elif t == 124:
                    v = 2 * v + 1  # the attributed value follows the pairs
                owed += v
                if owed > MAX_OWED:
                    return -2
            if top and request and t != 42:
                return -2
            i = end + 2
        elif t == 43 or t == 45 or t == 58 or t == 95 or t == 44 or t == 35 or t == 40:
            if request:
                return -2
            if t == 45:
                r.error = 1
            if top and (t == 43 or t == 45):
                r.word_off = <uint32_t>(i + 1)
                r.word_len = <uint32_t>(end - i - 1)
            i = end + 2
        else:
            return -2
        if request and not top:
            r.nargs += 1
        top = False
    return i


cdef Py_ssize_t _payload(const uint8_t *p, int64_t n, uint8_t request, char *rows, Py_ssize_t room) noexcept nogil:
    """The messages of one payload -> rows (payload_parser of payloads.pxd)."""
    cdef row_t *out = <row_t *>rows
    cdef Py_ssize_t used = 0
    cdef int64_t k = 0, nxt
    while k < n:
        if used == room:
            return -1
        nxt = _message(p, k, n, request, &out[used])
        out[used].off = <uint32_t>k
        if nxt >= 0:
            out[used].length = <uint32_t>(nxt - k)
            out[used].complete = 1
            out[used].valid = 1
            k = nxt
        else:
            out[used].valid = nxt == -1
            k = n
        used += 1
    return used


cdef row_t _r
ROW_DTYPE = np.dtype({
    "names": list(ROW_FIELDS),
    "formats": ["<u4", "<u4", "<u4", "u1", "u1", "u1", "<u4", "<u4", "<u4"],
    "offsets": [offset_of(&_r, &_r.ev), offset_of(&_r, &_r.off), offset_of(&_r, &_r.length),
                offset_of(&_r, &_r.complete), offset_of(&_r, &_r.valid), offset_of(&_r, &_r.error),
                offset_of(&_r, &_r.nargs), offset_of(&_r, &_r.word_off), offset_of(&_r, &_r.word_len)],
    "itemsize": sizeof(row_t)})


def parse(payloads, requests):
    """Rows (numpy structured array of ROW_DTYPE) of the messages in
    ``payloads`` (a pyarrow Binary/LargeBinary array); ``requests`` (bool
    per payload) tells requests from replies."""
    return parse_rows(payloads, requests, _payload, ROW_DTYPE)

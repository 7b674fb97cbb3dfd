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

from payloads cimport payload_view, view_payloads, payload_start

cnp.import_array()

__all__ = ["parse", "ROW_FIELDS"]

ROW_FIELDS = ("ev", "off", "length", "complete", "valid", "error", "nargs", "word_off", "word_len")

# A message may announce at most this many nested values: more is not
# Redis talking (the server caps multibulk length at 1024*1024*1024 but
# no real reply nests like that within one 2 KiB capture).
DEF MAX_OWED = 1 << 24

cdef struct row_t:
    uint32_t off, length, nargs, word_off, word_len
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


def parse(payloads, requests):
    """Rows (dict of numpy columns, ROW_FIELDS) of the messages in
    ``payloads`` (a pyarrow Binary/LargeBinary array); ``requests`` (bool
    per payload, numpy) tells requests from replies."""
    cdef payload_view pv = view_payloads(payloads)
    cdef const uint8_t[::1] req = np.ascontiguousarray(requests, dtype=np.uint8)
    if req.shape[0] != pv.n:
        raise ValueError(f"{pv.n} payloads but {req.shape[0]} direction flags")
    cdef Py_ssize_t cap = pv.n * 2 + 16, rows = 0, k
    cdef int64_t j, a, b, nxt
    cdef row_t *out
    cdef bytearray buf = bytearray(cap * sizeof(row_t))
    ev = np.empty(cap, np.uint32)
    cdef uint32_t[::1] evv = ev
    j = 0
    while j < pv.n:
        out = <row_t *><char *>buf
        with nogil:
            while j < pv.n and rows < cap:
                a = payload_start(&pv, j)
                b = payload_start(&pv, j + 1)
                k = a
                while k < b and rows < cap:
                    nxt = _message(pv.data + a, k - a, b - a, req[j], &out[rows])
                    out[rows].off = <uint32_t>(k - a)
                    evv[rows] = <uint32_t>j
                    if nxt >= 0:
                        out[rows].length = <uint32_t>(nxt - (k - a))
                        out[rows].complete = 1
                        out[rows].valid = 1
                        k = a + nxt
                    else:
                        out[rows].length = 0
                        out[rows].complete = 0
                        out[rows].valid = nxt == -1
                        k = b
                    rows += 1
                if k < b:  # the rows ran out inside this payload: redo it whole
                    while rows > 0 and evv[rows - 1] == j:
                        rows -= 1
                    break
                j += 1
        if j < pv.n:
            cap *= 2
            buf.extend(bytes(len(buf)))
            ev = np.resize(ev, cap)
            evv = ev
    return _columns(<row_t *><char *>buf, rows, ev)


cdef dict _columns(const row_t *r, Py_ssize_t rows, ev):
    cols = {name: np.empty(rows, np.uint32 if name in ("off", "length", "nargs", "word_off", "word_len")
                           else np.uint8) for name in ROW_FIELDS[1:]}
    cdef uint32_t[::1] off = cols["off"], length = cols["length"], nargs = cols["nargs"]
    cdef uint32_t[::1] word_off = cols["word_off"], word_len = cols["word_len"]
    cdef uint8_t[::1] complete = cols["complete"], valid = cols["valid"], error = cols["error"]
    cdef Py_ssize_t i
    with nogil:
        for i in range(rows):
            off[i] = r[i].off
            length[i] = r[i].length
            nargs[i] = r[i].nargs
            word_off[i] = r[i].word_off
            word_len[i] = r[i].word_len
            complete[i] = r[i].complete
            valid[i] = r[i].valid
            error[i] = r[i].error
    cols["ev"] = ev[:rows].copy()
    return cols

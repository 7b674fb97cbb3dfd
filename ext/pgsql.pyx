"""PostgreSQL protocol 3 messages in captured payloads -> one row per
message that a span needs, without a Python object per message.

After the startup (its first message has no type byte; not parsed here,
spans start with queries), every message is a type byte, a big-endian
int32 length that counts itself, and the body
(postgresql.org/docs/current/protocol-message-formats.html).

Client messages with a row: ``Q`` simple query (SQL text), ``P`` Parse
(statement name, SQL text), ``B`` Bind (portal, statement name), ``E``
Execute (portal), ``S`` Sync (ends an extended-query request), ``C``
Close, ``D`` Describe, ``X`` Terminate. Server messages with a row: ``C``
CommandComplete (its tag: ``INSERT 0 1``, ``SELECT 5``), ``E``
ErrorResponse (fields ``C`` SQL state and ``M`` message), ``Z``
ReadyForQuery (ends a response; status ``I``/``T``/``E``), ``I``
EmptyQueryResponse, ``1`` ParseComplete, ``2`` BindComplete. Other
messages (row data, descriptions, notices, copy data...) are checked and
skipped: a result of many rows costs one row here, not one per data row.

Row fields: ``ev``, ``off``, ``length`` (the message with its type byte),
``complete``, ``valid`` (0: not the protocol; the payload's last row),
``type`` (the byte), ``text_off``/``text_len`` (Q and P SQL; C tag; E
message), ``name_off``/``name_len`` (P and B statement name, E portal),
``code_off`` (E: the 5-byte SQL state; 0 none), ``status`` (Z).

``tests/reference/pgsql_ref.py`` holds the same rules in plain Python.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t

import numpy as np
cimport numpy as cnp

from payloads cimport parse_rows
from dk_common cimport offset_of

cnp.import_array()

__all__ = ["parse", "ROW_DTYPE"]

# the longest message a span-relevant capture could begin: PostgreSQL
# caps messages at 1 GiB (PQ_LARGE_MESSAGE_LIMIT)
DEF MAX_LEN = 0x3fffffff

cdef struct row_t:
    uint32_t ev, off, length, text_off, text_len, name_off, name_len, code_off
    uint8_t complete, valid, type, status


cdef inline bint _frontend(uint8_t t) noexcept nogil:
    return t in b"QPBESCDXHFdcf"


cdef inline bint _backend(uint8_t t) noexcept nogil:
    return t in b"CEZI12TDnNstASKRGHWdcfv3V"


cdef inline bint _row_type(uint8_t t, bint request) noexcept nogil:
    if request:
        return t in b"QPBESCDX"
    return t in b"CEZI12"


cdef inline int64_t _cstr(const uint8_t *p, int64_t i, int64_t end) noexcept nogil:
    """End (index of the NUL) of the C string at p[i]; end when cut."""
    while i < end and p[i] != 0:
        i += 1
    return i


cdef Py_ssize_t _payload(const uint8_t *p, int64_t n, uint8_t request, char *rows, Py_ssize_t room) noexcept nogil:
    cdef row_t *r = NULL
    cdef Py_ssize_t used = 0
    cdef int64_t k = 0, mlen, body, end, i, z
    cdef uint8_t t
    cdef bint complete
    while k < n:
        t = p[k]
        if not (_frontend(t) if request else _backend(t)):
            mlen = -1
        elif n - k >= 5:
            mlen = (<int64_t>p[k + 1] << 24) | (p[k + 2] << 16) | (p[k + 3] << 8) | p[k + 4]
            if mlen < 4 or mlen > MAX_LEN:
                mlen = -1
        else:
            mlen = 0  # header cut by the capture
        if mlen < 0 or _row_type(t, request) or mlen == 0:
            if used == room:
                return -1
            r = <row_t *>rows + used
            used += 1
            r.off = <uint32_t>k
            r.type = t
            r.valid = mlen >= 0
            if mlen <= 0:
                return used
            r.length = <uint32_t>(mlen + 1)
        body = k + 5
        complete = body + mlen - 4 <= n
        end = body + mlen - 4 if complete else n
        if _row_type(t, request):
            r.complete = complete
            if t == 81 or (t == 67 and not request):  # Q; C CommandComplete
                r.text_off = <uint32_t>body
                r.text_len = <uint32_t>(_cstr(p, body, end) - body)
            elif t == 80:  # P: name, query
                i = _cstr(p, body, end)
                r.name_off = <uint32_t>body
                r.name_len = <uint32_t>(i - body)
                if i < end:
                    r.text_off = <uint32_t>(i + 1)
                    r.text_len = <uint32_t>(_cstr(p, i + 1, end) - i - 1)
            elif t == 66:  # B: portal, statement
                i = _cstr(p, body, end)
                if i < end:
                    r.name_off = <uint32_t>(i + 1)
                    r.name_len = <uint32_t>(_cstr(p, i + 1, end) - i - 1)
            elif t == 69 and request:  # Execute: portal
                r.name_off = <uint32_t>body
                r.name_len = <uint32_t>(_cstr(p, body, end) - body)
            elif t == 69:  # ErrorResponse: (field type, C string)*, 0
                i = body
                while i < end and p[i] != 0:
                    z = _cstr(p, i + 1, end)
                    if p[i] == 67 and z - i - 1 == 5:
                        r.code_off = <uint32_t>(i + 1)
                    elif p[i] == 77:
                        r.text_off = <uint32_t>(i + 1)
                        r.text_len = <uint32_t>(z - i - 1)
                    i = z + 1
            elif t == 90 and end > body:  # Z: transaction status
                r.status = p[body]
        if not complete:
            return used
        k = body + mlen - 4
    return used


cdef row_t _r
ROW_DTYPE = np.dtype({
    "names": ["ev", "off", "length", "complete", "valid", "type", "text_off", "text_len", "name_off",
              "name_len", "code_off", "status"],
    "formats": ["<u4", "<u4", "<u4", "u1", "u1", "u1", "<u4", "<u4", "<u4", "<u4", "<u4", "u1"],
    "offsets": [offset_of(&_r, &_r.ev), offset_of(&_r, &_r.off), offset_of(&_r, &_r.length),
                offset_of(&_r, &_r.complete), offset_of(&_r, &_r.valid), offset_of(&_r, &_r.type),
                offset_of(&_r, &_r.text_off), offset_of(&_r, &_r.text_len), offset_of(&_r, &_r.name_off),
                offset_of(&_r, &_r.name_len), offset_of(&_r, &_r.code_off), offset_of(&_r, &_r.status)],
    "itemsize": sizeof(row_t)})


def parse(payloads, requests):
    """Rows (numpy structured array of ROW_DTYPE) of the messages in
    ``payloads`` (a pyarrow binary array); ``requests`` (bool per payload):
    written by the client."""
    return parse_rows(payloads, requests, _payload, ROW_DTYPE)

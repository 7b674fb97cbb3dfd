"""MySQL client/server protocol packets in captured payloads -> one row per
command or response start, without a Python object per packet.

A packet is a 3-byte little-endian length, a sequence number and the body
(dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html).
A command is the packet with sequence 0 that the client writes; its first
body byte is the command (COM_QUERY 0x03, COM_STMT_PREPARE 0x16,
COM_STMT_EXECUTE 0x17, ...). A response starts with the packet of sequence
1: OK (0x00), ERR (0xFF: u16 code, ``#`` and a 5-byte SQL state, the
message), EOF (0xFE, shorter than 9 bytes), LOCAL INFILE (0xFB), or a
result set (its first byte the column count). COM_STMT_PREPARE's OK also
starts with 0x00 and carries the statement id: the row gives both the
OK's affected rows and the u32 at byte 1, the span builder picks by the
command it answers.

Requests: every sequence-0 packet of the payload is a row (clients put
COM_STMT_CLOSE and the next command in one write). Responses: the first
packet when its sequence is 1, then the next ones as long as each ended
its response (OK, ERR, EOF): after a result set header the rest of the
payload is rows of that result.

Not handled: compressed protocol, TLS (the encrypted bytes), and
CLIENT_QUERY_ATTRIBUTES's parameter block before COM_QUERY's text (MySQL
8.0.23+ clients that send attributes; the capabilities are agreed at the
handshake, which a connection seen mid-stream lacks).

Row fields: ``ev``, ``off``, ``length`` (bytes of the packet with its
header, whether or not captured), ``complete`` (the whole packet is in the
payload), ``valid`` (0: not MySQL; the payload's last row), ``seq``,
``kind`` (the command byte of a request; RESP_* of a response),
``sql_off``/``sql_len`` (COM_QUERY and COM_STMT_PREPARE text, cut by the
capture), ``stmt_id`` (COM_STMT_EXECUTE/CLOSE/RESET/SEND_LONG_DATA; a
prepare's OK), ``err_code``, ``msg_off``/``msg_len`` (ERR message, the SQL
state left out), ``affected_rows`` (OK), ``columns`` (result set).

``tests/reference/mysql_ref.py`` holds the same rules in plain Python.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

import numpy as np
cimport numpy as cnp

from payloads cimport parse_rows
from dk_common cimport offset_of

cnp.import_array()

__all__ = ["parse", "ROW_DTYPE", "RESP_OK", "RESP_ERR", "RESP_EOF", "RESP_INFILE", "RESP_RESULTSET",
           "COM_QUERY", "COM_STMT_PREPARE", "COM_STMT_EXECUTE", "COM_STMT_CLOSE"]

cdef enum:
    C_RESP_OK = 1
    C_RESP_ERR = 2
    C_RESP_EOF = 3
    C_RESP_INFILE = 4
    C_RESP_RESULTSET = 5
    C_COM_MAX = 0x1f  # COM_RESET_CONNECTION, the last command number
    C_COM_QUERY = 0x03
    C_COM_STMT_PREPARE = 0x16

RESP_OK, RESP_ERR, RESP_EOF, RESP_INFILE, RESP_RESULTSET = 1, 2, 3, 4, 5
COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE = 0x03, 0x16, 0x17, 0x19

cdef struct row_t:
    uint32_t ev, off, length, sql_off, sql_len, stmt_id, msg_off, msg_len
    uint64_t affected_rows, columns
    uint16_t err_code
    uint8_t complete, valid, seq, kind


cdef inline bint _lenenc(const uint8_t *p, int64_t i, int64_t end, uint64_t *v, int64_t *next_i) noexcept nogil:
    """A length-encoded integer at p[i] (before end) -> v; False if cut or
    not one (0xFF, and 0xFB which means NULL)."""
    cdef uint8_t b
    cdef int w, x
    if i >= end:
        return False
    b = p[i]
    if b < 0xFB:
        v[0] = b
        next_i[0] = i + 1
        return True
    w = 2 if b == 0xFC else 3 if b == 0xFD else 8 if b == 0xFE else 0
    if w == 0 or i + 1 + w > end:
        return False
    v[0] = 0
    for x in range(w):
        v[0] |= (<uint64_t>p[i + 1 + x]) << (8 * x)
    next_i[0] = i + 1 + w
    return True


cdef inline uint32_t _u32(const uint8_t *p) noexcept nogil:
    return p[0] | (p[1] << 8) | (p[2] << 16) | (<uint32_t>p[3] << 24)


cdef Py_ssize_t _payload(const uint8_t *p, int64_t n, uint8_t request, char *rows, Py_ssize_t room) noexcept nogil:
    cdef row_t *r
    cdef Py_ssize_t used = 0
    cdef int64_t k = 0, body, end, plen, i
    cdef uint8_t first
    cdef uint64_t v
    while k < n:
        if used == room:
            return -1
        r = <row_t *>rows + used
        used += 1
        r.off = <uint32_t>k
        if n - k < 5:  # header and first body byte
            r.valid = 1 if (n - k < 4 or (p[k + 3] == (0 if request else 1))) else 0
            return used
        plen = p[k] | (p[k + 1] << 8) | (p[k + 2] << 16)
        r.seq = p[k + 3]
        body = k + 4
        r.length = <uint32_t>(plen + 4)
        r.complete = body + plen <= n
        end = body + plen if r.complete else n
        first = p[body]
        if plen == 0 or r.seq != (0 if request else 1):
            r.valid = 0
            return used
        r.valid = 1
        if request:
            if first > C_COM_MAX:
                r.valid = 0
                return used
            r.kind = first
            if first == C_COM_QUERY or first == C_COM_STMT_PREPARE:
                r.sql_off = <uint32_t>(body + 1)
                r.sql_len = <uint32_t>(end - body - 1)
            elif 0x17 <= first <= 0x1a and end - body >= 5:  # EXECUTE SEND_LONG_DATA CLOSE RESET
                r.stmt_id = _u32(p + body + 1)
        elif first == 0x00 and plen >= 7:
            r.kind = C_RESP_OK
            if _lenenc(p, body + 1, end, &v, &i):
                r.affected_rows = v
            if end - body >= 5:
                r.stmt_id = _u32(p + body + 1)
        elif first == 0xFF:
            r.kind = C_RESP_ERR
            if end - body >= 3:
                r.err_code = p[body + 1] | (p[body + 2] << 8)
            i = body + 3
            if i < end and p[i] == 35:  # '#' + SQL state
                i += 6
            if i < end:
                r.msg_off = <uint32_t>i
                r.msg_len = <uint32_t>(end - i)
        elif first == 0xFE and plen < 9:
            r.kind = C_RESP_EOF
        elif first == 0xFB:
            r.kind = C_RESP_INFILE
        elif _lenenc(p, body, end, &v, &i) and v > 0:
            r.kind = C_RESP_RESULTSET
            r.columns = v
            return used  # the rest of the payload is this result's rows
        else:
            r.valid = 0
            return used
        if not r.complete:
            return used
        k = body + plen
    return used


cdef row_t _r
ROW_DTYPE = np.dtype({
    "names": ["ev", "off", "length", "complete", "valid", "seq", "kind", "sql_off", "sql_len", "stmt_id",
              "err_code", "msg_off", "msg_len", "affected_rows", "columns"],
    "formats": ["<u4", "<u4", "<u4", "u1", "u1", "u1", "u1", "<u4", "<u4", "<u4", "<u2", "<u4", "<u4", "<u8", "<u8"],
    "offsets": [offset_of(&_r, &_r.ev), offset_of(&_r, &_r.off), offset_of(&_r, &_r.length),
                offset_of(&_r, &_r.complete), offset_of(&_r, &_r.valid), offset_of(&_r, &_r.seq),
                offset_of(&_r, &_r.kind), offset_of(&_r, &_r.sql_off), offset_of(&_r, &_r.sql_len),
                offset_of(&_r, &_r.stmt_id), offset_of(&_r, &_r.err_code), offset_of(&_r, &_r.msg_off),
                offset_of(&_r, &_r.msg_len), offset_of(&_r, &_r.affected_rows), offset_of(&_r, &_r.columns)],
    "itemsize": sizeof(row_t)})


def parse(payloads, requests):
    """Rows (numpy structured array of ROW_DTYPE) of the packets in
    ``payloads`` (a pyarrow binary array); ``requests`` (bool per payload):
    written by the client."""
    return parse_rows(payloads, requests, _payload, ROW_DTYPE)

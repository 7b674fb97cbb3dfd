"""HTTP/2 frames (RFC 9113 section 4) in captured payloads -> one row per
frame, without a Python object per frame; the header blocks they carry go
to the connection's HPACK decoder (dkebpf._hpack) in the span builder.

A frame is a 9-byte header (24-bit length, type, flags, 31-bit stream id)
and its payload. A payload that starts with the client connection preface
(``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``) gets a row of type PREFACE
first. For HEADERS (1), PUSH_PROMISE (5) and CONTINUATION (9) the row
points at the header block fragment: without padding (flag PADDED 0x8:
one pad-length byte first, that many bytes at the end), without the
priority fields (HEADERS flag PRIORITY 0x20: 5 bytes), without the promised
stream id (PUSH_PROMISE: 4 bytes). Unknown frame types are rows too (a
receiver ignores them, RFC 9113 5.5).

A frame header that breaks what senders must do is taken as not HTTP/2:
the reserved stream bit set, a type above 0x10 (the registered ones), a
stream frame (DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE,
CONTINUATION) on stream 0, a SETTINGS/PING/GOAWAY on another stream, or
padding longer than the frame. One row with ``valid`` 0 ends the payload (a connection seen
mid-stream, whose payload starts inside a frame, lands here until the span
builder finds a frame start).

Row fields: ``ev``, ``off``, ``length`` (frame with header), ``complete``,
``valid``, ``type``, ``flags``, ``stream``, ``block_off``/``block_len``
(header block fragment within the payload; cut by the capture when not
complete).

``tests/reference/http2_ref.py`` holds the same rules in plain Python.

For Python code (the CRI client, dkebpf/enrich/cri.py; the tests):
``frame`` writes one frame, ``frame_header`` reads one frame header with
the parser of the rows (``h2frame.pxd``).
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcmp

import numpy as np
cimport numpy as cnp

from payloads cimport parse_rows
from dk_common cimport offset_of
from h2frame cimport h2_frame_t, h2_frame_header, h2_preface_at

cnp.import_array()

__all__ = ["parse", "ROW_DTYPE", "PREFACE", "HEADERS", "CONTINUATION", "DATA", "frame", "frame_header"]

PREFACE, DATA, HEADERS, PUSH_PROMISE, CONTINUATION = 0xFF, 0, 1, 5, 9

cdef struct row_t:
    uint32_t ev, off, length, stream, block_off, block_len
    uint8_t complete, valid, type, flags


cdef Py_ssize_t _payload(const uint8_t *p, int64_t n, uint8_t unused, char *rows, Py_ssize_t room) noexcept nogil:
    cdef row_t *r
    cdef Py_ssize_t used = 0
    cdef int64_t k = 0, flen, body, end, a, b, pad
    cdef h2_frame_t f
    cdef bint ok
    if h2_preface_at(p, n):
        if room == 0:
            return -1
        r = <row_t *>rows
        r.type = 0xFF
        r.length = 24
        r.complete = 1
        r.valid = 1
        used = 1
        k = 24
    while k < n:
        if used == room:
            return -1
        r = <row_t *>rows + used
        used += 1
        r.off = <uint32_t>k
        if n - k < 9:
            r.valid = 1
            return used
        ok = h2_frame_header(p + k, &f)
        flen = f.length
        r.type = f.type
        r.flags = f.flags
        r.stream = f.stream
        if not ok:
            r.valid = 0
            return used
        r.valid = 1
        r.length = <uint32_t>(flen + 9)
        body = k + 9
        r.complete = body + flen <= n
        end = body + flen if r.complete else n
        if r.type == 1 or r.type == 5 or r.type == 9:
            a = body
            b = body + flen
            pad = 0
            if r.type != 9 and r.flags & 0x8:
                if a >= end:
                    r.valid = 0
                    return used
                pad = p[a]
                a += 1
            if r.type == 1 and r.flags & 0x20:
                a += 5
            if r.type == 5:
                a += 4
            b -= pad
            if a > b:
                r.valid = 0
                return used
            if b > end:
                b = end
            if a > end:
                a = end
            r.block_off = <uint32_t>a
            r.block_len = <uint32_t>(b - a if b > a else 0)
        if not r.complete:
            return used
        k = body + flen
    return used


cdef row_t _r
ROW_DTYPE = np.dtype({
    "names": ["ev", "off", "length", "complete", "valid", "type", "flags", "stream", "block_off", "block_len"],
    "formats": ["<u4", "<u4", "<u4", "u1", "u1", "u1", "u1", "<u4", "<u4", "<u4"],
    "offsets": [offset_of(&_r, &_r.ev), offset_of(&_r, &_r.off), offset_of(&_r, &_r.length),
                offset_of(&_r, &_r.complete), offset_of(&_r, &_r.valid), offset_of(&_r, &_r.type),
                offset_of(&_r, &_r.flags), offset_of(&_r, &_r.stream), offset_of(&_r, &_r.block_off),
                offset_of(&_r, &_r.block_len)],
    "itemsize": sizeof(row_t)})


def parse(payloads):
    """Rows (numpy structured array of ROW_DTYPE) of the frames in
    ``payloads`` (a pyarrow binary array)."""
    return parse_rows(payloads, np.zeros(len(payloads), np.uint8), _payload, ROW_DTYPE)


def frame(uint8_t kind, uint8_t flags, uint32_t stream, payload=b""):
    """One HTTP/2 frame (bytes): the 9-byte header, then ``payload``.
    ``stream`` is written as given, all 32 bits (a test may set the
    reserved bit)."""
    cdef bytes body = bytes(payload)
    cdef Py_ssize_t n = len(body)
    cdef uint8_t h[9]
    if n >= 1 << 24:
        raise ValueError(f"an HTTP/2 frame payload of {n} bytes (the length field holds 24 bits)")
    h[0] = <uint8_t>(n >> 16)
    h[1] = <uint8_t>(n >> 8)
    h[2] = <uint8_t>n
    h[3] = kind
    h[4] = flags
    h[5] = <uint8_t>(stream >> 24)
    h[6] = <uint8_t>(stream >> 16)
    h[7] = <uint8_t>(stream >> 8)
    h[8] = <uint8_t>stream
    return (<char *>h)[:9] + body


def frame_header(const uint8_t[::1] head):
    """(length, type, flags, stream) of the frame header at the start of
    ``head`` (a bytes-like object of at least 9 bytes; ValueError when
    shorter), the reserved stream bit left out. What h2_frame_header checks
    for the rows (the reserved bit, the types and streams senders use) is
    not applied: an endpoint ignores the reserved bit and unknown frame
    types (RFC 9113 4.1, 5.5)."""
    cdef h2_frame_t f
    if head.shape[0] < 9:
        raise ValueError(f"an HTTP/2 frame header of {head.shape[0]} bytes, 9 needed")
    h2_frame_header(&head[0], &f)
    return f.length, f.type, f.flags, f.stream

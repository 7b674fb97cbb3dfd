"""HTTP/1.x request and status lines, and the exchanges the kernel paired
(struct http_exchange, bpf/include/http.h) turned into columns.

Everything here works on numpy structured arrays through C pointers with
the GIL released; no Python object is made per record.

parse_first_line / message_length / message_end (C, cimported by ebpf-trace
through ext/includes/dkebpf/_http.pxd): one request or status line, how long
a message is, where it ends.
message_bounds(payloads, requests) -> the messages of each captured payload
    (ebpf-trace splits pipelined calls by them, as by ext/redis.pyx's rows).
exchange_columns(records) -> method, version, truncated codes and the
    path strings (pyarrow) of each record's request head.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcmp, memcpy

import numpy as np
cimport numpy as cnp
import pyarrow as pa

from http_maps cimport http_exchange, HTTP_HEAD_MAX
from dk_common cimport offset_of
from payloads cimport parse_rows
from dkebpf._records import HTTP_EXCHANGE_DTYPE, _dtype

cnp.import_array()

# message kinds (K_*: the module's .pxd, ext/includes/dkebpf/_http.pxd, with
# http_msg and the functions other Cython modules cimport)
KIND_REQUEST = K_REQUEST
KIND_RESPONSE = K_RESPONSE
KIND_CLOSE = K_CLOSE

# method codes; 0 = none. Index into METHODS.
METHODS = ["", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
cdef const char *_METHOD_TOKENS[10]
_METHOD_TOKENS[:] = [b"", b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
                     b"CONNECT", b"TRACE"]
cdef int _METHOD_LENS[10]
_METHOD_LENS[:] = [0, 3, 4, 3, 6, 4, 7, 5, 7, 5]
VERSIONS = {10: "1.0", 11: "1.1"}
# a 512-byte prefix holds at most this many minimal messages ("GET / HTTP/1.1\r\n\r\n")
cdef enum:
    MAX_MSGS_PER_EVENT = 32


cdef http_msg _m

MSG_DTYPE = _dtype("http_msg", [
    ("sk", "<u8", offset_of(&_m, &_m.sk)),
    ("ts", "<u8", offset_of(&_m, &_m.ts)),
    ("pid", "<u4", offset_of(&_m, &_m.pid)),
    ("ev", "<u4", offset_of(&_m, &_m.ev)),
    ("seg_len", "<u4", offset_of(&_m, &_m.seg_len)),
    ("off", "<u2", offset_of(&_m, &_m.off)),
    ("path_off", "<u2", offset_of(&_m, &_m.path_off)),
    ("path_len", "<u2", offset_of(&_m, &_m.path_len)),
    ("status", "<u2", offset_of(&_m, &_m.status)),
    ("kind", "u1", offset_of(&_m, &_m.kind)),
    ("method", "u1", offset_of(&_m, &_m.method)),
    ("version", "u1", offset_of(&_m, &_m.version)),
    ("truncated", "u1", offset_of(&_m, &_m.truncated)),
], sizeof(http_msg))

if HTTP_EXCHANGE_DTYPE.itemsize != sizeof(http_exchange):
    raise ImportError("http_exchange layout differs between dkebpf._records and dkebpf._http")


# --- first-line parser --------------------------------------------------------

cdef inline bint _is_tchar_target(uint8_t c) noexcept nogil:
    # request-target: visible ASCII (RFC 9112 section 3.2, RFC 3986); no SP
    return 0x21 <= c <= 0x7e


cdef inline int _version(const uint8_t *p, int i, int n, uint8_t *ver) noexcept nogil:
    """Parse "HTTP/1.0" or "HTTP/1.1" at p[i:]. Returns the index after it,
    -1 when it is not one, -2 when the capture ends inside it."""
    cdef const char *lit = b"HTTP/1."
    cdef int k
    for k in range(7):
        if i + k >= n:
            return -2
        if p[i + k] != <uint8_t>lit[k]:
            return -1
    if i + 7 >= n:
        return -2
    if p[i + 7] == 0x30:
        ver[0] = 10
    elif p[i + 7] == 0x31:
        ver[0] = 11
    else:
        return -1
    return i + 8


cdef inline int _crlf(const uint8_t *p, int i, int n) noexcept nogil:
    """1 when p[i:] is CRLF or the capture ends before it is complete, 0
    otherwise."""
    if i >= n:
        return 1
    if p[i] != 13:
        return 0
    if i + 1 >= n:
        return 1
    return p[i + 1] == 10


cdef int parse_first_line(const uint8_t *p, int n, http_msg *m) noexcept nogil:
    """Parse a request or status line at p[0:n] into m (kind, method,
    path, version, status, truncated). Returns 1 on a message start, 0
    otherwise. A line cut by the capture limit still counts when what was
    captured is well-formed."""
    cdef int i, j, k, r, code
    cdef uint8_t ver = 0
    m.kind = 0
    m.method = 0
    m.version = 0
    m.status = 0
    m.path_off = 0
    m.path_len = 0
    m.truncated = 0
    if n >= 5 and p[0] == 0x48 and p[1] == 0x54:  # "HT": a status line
        r = _version(p, 0, n, &ver)
        if r < 0:
            return 0
        # SP 3DIGIT (SP reason-phrase)? CRLF -- RFC 9112 section 4
        if r + 4 > n or p[r] != 0x20:
            return 0
        code = 0
        for k in range(1, 4):
            if p[r + k] < 0x30 or p[r + k] > 0x39:
                return 0
            code = code * 10 + (p[r + k] - 0x30)
        if code < 100 or code > 599:
            return 0
        i = r + 4
        if i < n and p[i] != 0x20 and p[i] != 13:
            return 0
        m.kind = K_RESPONSE
        m.version = ver
        m.status = code
        return 1
    for k in range(1, 10):
        j = _METHOD_LENS[k]
        if n > j and p[j] == 0x20:
            r = 0
            for i in range(j):
                if p[i] != <uint8_t>_METHOD_TOKENS[k][i]:
                    r = 1
                    break
            if r == 0:
                m.method = k
                break
    if m.method == 0:
        return 0
    i = _METHOD_LENS[m.method] + 1
    j = i
    # the target, up to SP; the path is the part before '?' or '#'
    m.path_off = i
    k = -1  # end of the path
    while j < n and p[j] != 0x20:
        if not _is_tchar_target(p[j]):
            return 0
        if k < 0 and (p[j] == 0x3f or p[j] == 0x23):
            k = j
        j += 1
    if j == i:
        return 0  # empty target
    if j >= n:
        # the capture ends inside the target: the path may be cut short
        if k < 0:
            m.truncated = 1
            k = j
        m.path_len = k - i
        m.kind = K_REQUEST
        return 1
    if k < 0:
        k = j
    m.path_len = k - i
    r = _version(p, j + 1, n, &ver)
    if r == -1:
        return 0
    if r >= 0:
        if not _crlf(p, r, n):
            return 0
        m.version = ver
    m.kind = K_REQUEST
    return 1


cdef inline int _lower(uint8_t c) noexcept nogil:
    return c + 32 if 0x41 <= c <= 0x5a else c


cdef bint _name_is(const uint8_t *p, int i, int e, const char *name, int nlen) noexcept nogil:
    cdef int k
    if e - i != nlen:
        return 0
    for k in range(nlen):
        if _lower(p[i + k]) != <uint8_t>name[k]:
            return 0
    return 1


cdef inline int64_t _eol(const uint8_t *p, int64_t i, int64_t n) noexcept nogil:
    """Index of the CR of the first CRLF at or after p[i] within p[0:n];
    -1 when the capture ends first."""
    while i + 1 < n and not (p[i] == 13 and p[i + 1] == 10):
        i += 1
    return i if i + 1 < n else -1


cdef int64_t _chunked_end(const uint8_t *p, int64_t i, int64_t n) noexcept nogil:
    """Where a chunked body starting at p[i] ends (after its last chunk and
    trailers) when that is inside p[0:n]; -1 otherwise (cut by the capture,
    or not chunked coding)."""
    cdef int64_t size, e, digits
    cdef uint8_t c
    while True:
        e = i
        size = 0
        digits = 0
        while e < n and p[e] != 13 and p[e] != 0x3b:  # the size, up to CR or a chunk extension
            c = _lower(p[e])
            if 0x30 <= c <= 0x39:
                size = size * 16 + (c - 0x30)
            elif 0x61 <= c <= 0x66:
                size = size * 16 + (c - 0x61 + 10)
            else:
                return -1
            digits += 1
            if size > 0x7fffffff:
                return -1
            e += 1
        if digits == 0:
            return -1
        e = _eol(p, e, n)
        if e < 0:
            return -1
        i = e + 2
        if size == 0:
            break
        i += size
        if i + 2 > n:
            return -1
        if p[i] != 13 or p[i + 1] != 10:
            return -1
        i += 2
    # trailer fields, up to an empty line
    while True:
        e = _eol(p, i, n)
        if e < 0:
            return -1
        if e == i:
            return i + 2
        i = e + 2


cdef int64_t message_length(const uint8_t *p, int n, const http_msg *m) noexcept nogil:
    """Bytes of the message starting at p[0] whose header block is inside
    p[0:n] (RFC 9112 section 6.3): the block plus its Content-Length body,
    which may run past n (the capture: the length is still known), or plus
    a chunked body whose end is inside p[0:n]. -1 when it cannot be known:
    the block cut, a chunked body past the capture, a body until close, a
    malformed length."""
    cdef int i, e, c, k
    cdef int64_t clen = -1
    cdef bint chunked = 0
    i = <int>_eol(p, 0, n)  # the first line
    if i < 0:
        return -1
    i += 2
    while True:
        e = <int>_eol(p, i, n)
        if e < 0:
            return -1
        if e == i:  # the empty line ending the block
            i += 2
            break
        c = i
        while c < e and p[c] != 0x3a:
            c += 1
        if c < e:
            if _name_is(p, i, c, b"content-length", 14):
                k = c + 1
                while k < e and (p[k] == 0x20 or p[k] == 9):
                    k += 1
                clen = 0
                if k >= e:
                    return -1
                while k < e and 0x30 <= p[k] <= 0x39:
                    clen = clen * 10 + (p[k] - 0x30)
                    if clen > 0x7fffffff:
                        return -1
                    k += 1
                while k < e and (p[k] == 0x20 or p[k] == 9):
                    k += 1
                if k != e:
                    return -1
            elif _name_is(p, i, c, b"transfer-encoding", 17):
                chunked = 1
        i = e + 2
    if m.kind == K_RESPONSE and (m.status < 200 or m.status == 204 or m.status == 304):
        return i  # no body whatever the headers say
    if chunked:
        return _chunked_end(p, i, n)
    if clen >= 0:
        return i + clen
    if m.kind == K_REQUEST:
        return i  # a request without Content-Length has no body
    return -1  # the body runs until the connection closes


cdef int message_end(const uint8_t *p, int n, const http_msg *m) noexcept nogil:
    """Where the message starting at p[0] ends within p[0:n]
    (message_length); -1 when that is not inside the capture or cannot be
    known."""
    cdef int64_t end = message_length(p, n, m)
    return <int>end if 0 <= end <= n else -1


cdef Py_ssize_t _parse_messages(const uint8_t *p, int n, uint32_t nbytes, http_msg *out) noexcept nogil:
    """Message starts in one call's first n bytes (nbytes moved in all);
    returns how many were written."""
    cdef Py_ssize_t cnt = 0
    cdef int off = 0, end
    cdef http_msg *m
    while cnt < MAX_MSGS_PER_EVENT and off < n:
        m = &out[cnt]
        if not parse_first_line(p + off, n - off, m):
            break
        m.off = off
        m.path_off += off
        m.ev = 0
        m.sk = 0
        m.pid = 0
        m.ts = 0
        m.seg_len = nbytes - off if nbytes > <uint32_t>off else 0
        cnt += 1
        end = message_end(p + off, n - off, m)
        if end <= 0:
            break
        m.seg_len = end
        off += end
    return cnt


def parse_payload(bytes payload, unsigned int nbytes=0):
    """Messages in one payload (tests and benchmarks): list of dicts."""
    cdef http_msg tmp[MAX_MSGS_PER_EVENT]
    cdef const uint8_t *p = payload
    cdef Py_ssize_t got = _parse_messages(p, min(len(payload), 512), nbytes or len(payload), tmp)
    out = []
    for i in range(got):
        m = <dict>tmp[i]
        d = {k: int(m[k]) for k in ("off", "kind", "method", "version", "status", "truncated", "seg_len")}
        d["path"] = payload[m["path_off"]: m["path_off"] + m["path_len"]] if m["kind"] == K_REQUEST else b""
        out.append(d)
    return out


# --- message bounds in captured payloads (ebpf-trace's pipelining) -----------

cdef struct bound_t:  # one message of a payload (BOUND_DTYPE)
    uint32_t ev        # the payload (set by payloads.pxd's driver)
    uint32_t off       # where the message starts in it
    uint32_t length    # its bytes (may run past the capture); 0 not known
    uint8_t complete   # all of it inside the capture
    uint8_t valid      # a message of the expected kind starts at `off`


cdef Py_ssize_t _bounds(const uint8_t *p, int64_t n, uint8_t request, char *rows, Py_ssize_t room) noexcept nogil:
    """The messages of one payload -> bound_t rows (payload_parser of
    payloads.pxd): one per message delimited in it, in order; the first
    that cannot be (cut, no length known, not a request or response as
    `request` says) is the last row, with length 0 (valid 0 when no
    message starts there)."""
    cdef bound_t *out = <bound_t *>rows
    cdef Py_ssize_t used = 0
    cdef int64_t off = 0, length
    cdef http_msg m
    if n > 0x7fffffff:
        n = 0x7fffffff
    while off < n:
        if used == room:
            return -1
        out[used].off = <uint32_t>off
        out[used].length = 0
        out[used].complete = 0
        out[used].valid = 0
        used += 1
        if not parse_first_line(p + off, <int>(n - off), &m) or m.kind != (K_REQUEST if request else K_RESPONSE):
            break
        out[used - 1].valid = 1
        length = message_length(p + off, <int>(n - off), &m)
        if length <= 0:
            break
        out[used - 1].length = <uint32_t>length
        if off + length > n:
            break
        out[used - 1].complete = 1
        off += length
    return used


cdef bound_t _b
BOUND_DTYPE = np.dtype({
    "names": ["ev", "off", "length", "complete", "valid"],
    "formats": ["<u4", "<u4", "<u4", "u1", "u1"],
    "offsets": [offset_of(&_b, &_b.ev), offset_of(&_b, &_b.off), offset_of(&_b, &_b.length),
                offset_of(&_b, &_b.complete), offset_of(&_b, &_b.valid)],
    "itemsize": sizeof(bound_t)})


def message_bounds(payloads, requests):
    """The HTTP/1.x messages of each payload (a pyarrow Binary array of
    captured bytes, `requests`: one bool per payload, requests or
    responses): BOUND_DTYPE rows in payload order, with the fields of
    ext/redis.pyx's rows that ebpf-trace's pipeline splitting reads (ev,
    off, length, complete, valid)."""
    return parse_rows(payloads, requests, _bounds, BOUND_DTYPE)


def first_lines(payloads, lengths):
    """Benchmark entry: parse the first line of each row of a (n, width)
    uint8 array; returns (kind, method, status, path_len) arrays."""
    cdef const uint8_t[:, ::1] p = payloads
    cdef const int32_t[::1] ln = lengths
    cdef Py_ssize_t i, n = p.shape[0]
    kind = np.zeros(n, np.uint8)
    method = np.zeros(n, np.uint8)
    status = np.zeros(n, np.uint16)
    plen = np.zeros(n, np.uint16)
    cdef uint8_t[::1] k = kind, me = method
    cdef uint16_t[::1] st = status, pl = plen
    cdef http_msg m
    with nogil:
        for i in range(n):
            if parse_first_line(&p[i, 0], ln[i], &m):
                k[i] = m.kind
                me[i] = m.method
                st[i] = m.status
                pl[i] = m.path_len
    return kind, method, status, plen


# --- exchanges paired in the kernel --------------------------------------------

cdef struct xrow:  # a record's request key
    uint64_t hash
    uint16_t path_off
    uint16_t path_len
    uint8_t method
    uint8_t version    # the request's, else the response's; 0 unknown
    uint8_t truncated


cdef inline bint _request_key(const http_exchange *x, xrow *k) noexcept nogil:
    """The request line of a record's head -> k (all but hash); 0 when the
    head is no request line."""
    cdef http_msg m
    cdef int hl = x.head_len if x.head_len <= HTTP_HEAD_MAX else HTTP_HEAD_MAX
    if not parse_first_line(x.head, hl, &m) or m.kind != K_REQUEST:
        return 0
    k.method = m.method
    k.version = m.version if m.version else x.resp_version
    if k.version != 10 and k.version != 11:
        k.version = 0
    k.truncated = m.truncated
    k.path_off = m.path_off
    k.path_len = m.path_len
    return 1


def exchange_columns(records):
    """The request heads of HTTP_EXCHANGE_DTYPE records, parsed: (method
    codes (index into METHODS, 0: the head is no request line), version
    (the request's, else the response's: 10, 11, 0 unknown), truncated
    (0/1), path: pyarrow string array, the
    path without query, ASCII as the parser accepts only visible ASCII)."""
    records = np.ascontiguousarray(records)
    if records.dtype != HTTP_EXCHANGE_DTYPE:
        raise TypeError(f"expected HTTP_EXCHANGE_DTYPE records, got {records.dtype}")
    cdef Py_ssize_t n = len(records), i, total = 0
    method = np.zeros(n, np.uint8)
    version = np.zeros(n, np.uint8)
    truncated = np.zeros(n, np.uint8)
    offsets = np.empty(n + 1, np.int32)
    data = np.empty(max(n * HTTP_HEAD_MAX, 1), np.uint8)
    cdef const http_exchange *x = <const http_exchange *>cnp.PyArray_DATA(records)
    cdef uint8_t *me = <uint8_t *>cnp.PyArray_DATA(method)
    cdef uint8_t *ve = <uint8_t *>cnp.PyArray_DATA(version)
    cdef uint8_t *tr = <uint8_t *>cnp.PyArray_DATA(truncated)
    cdef int32_t *off = <int32_t *>cnp.PyArray_DATA(offsets)
    cdef uint8_t *d = <uint8_t *>cnp.PyArray_DATA(data)
    cdef xrow k
    with nogil:
        off[0] = 0
        for i in range(n):
            if _request_key(&x[i], &k):
                me[i] = k.method
                ve[i] = k.version
                tr[i] = k.truncated
                memcpy(d + total, x[i].head + k.path_off, k.path_len)
                total += k.path_len
            off[i + 1] = <int32_t>total
    path = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data[:max(total, 1)]))
    return method, version, truncated, path


cdef inline uint64_t _mix(uint64_t h, uint64_t w) noexcept nogil:
    # one multiply-xorshift round per 8 bytes (a hash for a table, not for
    # adversaries: a collision costs a comparison, never a wrong sum)
    h = (h ^ w) * 0x9E3779B97F4A7C15ULL
    return h ^ (h >> 29)


cdef inline uint64_t _mix_bytes(uint64_t h, const uint8_t *p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t w
    cdef Py_ssize_t k = 0
    while k + 8 <= n:
        memcpy(&w, p + k, 8)
        h = _mix(h, w)
        k += 8
    if k < n:
        w = 0
        memcpy(&w, p + k, n - k)
        h = _mix(h, w ^ (<uint64_t>(n - k) << 56))
    return h


cdef inline bint _same(const http_exchange *a, const xrow *ka, const http_exchange *b, const xrow *kb) noexcept nogil:
    return (ka.hash == kb.hash and a.pid == b.pid and a.lport == b.lport and a.rport == b.rport
            and a.family == b.family and a.proto == b.proto and a.direction == b.direction
            and a.status == b.status and ka.method == kb.method and ka.version == kb.version
            and ka.truncated == kb.truncated and ka.path_len == kb.path_len
            and memcmp(a.laddr, b.laddr, 16) == 0 and memcmp(a.raddr, b.raddr, 16) == 0
            and memcmp(a.comm, b.comm, 16) == 0
            and memcmp(a.head + ka.path_off, b.head + kb.path_off, ka.path_len) == 0)


def exchange_groups(records):
    """HTTP_EXCHANGE_DTYPE records -> one group per connection (pid, tuple,
    direction, process name) and request key (method, path, status,
    version, truncated), summed in one pass over the records with a hash
    table (no Python object, no sort): returns a dict of numpy arrays,
    `rep` (the index of a record of each group), `method`, `version`
    (request's, else the response's; 0 unknown), `truncated`, `count`,
    `latency_sum`, `req_bytes_sum`, `resp_bytes_sum`, and `path` (pyarrow
    strings), plus `not_request`: records whose head is no request line
    (left out)."""
    records = np.ascontiguousarray(records)
    if records.dtype != HTTP_EXCHANGE_DTYPE:
        raise TypeError(f"expected HTTP_EXCHANGE_DTYPE records, got {records.dtype}")
    cdef Py_ssize_t n = len(records), i, g, j, ng = 0, cap = 16, not_request = 0, total = 0
    while cap < 2 * n:
        cap *= 2
    cdef Py_ssize_t mask = cap - 1
    keys = np.empty(max(n, 1) * sizeof(xrow), np.uint8)
    table = np.full(cap, -1, np.int64)
    rep = np.empty(max(n, 1), np.int64)
    count = np.zeros(max(n, 1), np.int64)
    lat = np.zeros(max(n, 1), np.int64)
    reqb = np.zeros(max(n, 1), np.int64)
    respb = np.zeros(max(n, 1), np.int64)
    cdef const http_exchange *x = <const http_exchange *>cnp.PyArray_DATA(records)
    cdef xrow *k = <xrow *>cnp.PyArray_DATA(keys)
    cdef int64_t *T = <int64_t *>cnp.PyArray_DATA(table)
    cdef int64_t *R = <int64_t *>cnp.PyArray_DATA(rep)
    cdef int64_t *C = <int64_t *>cnp.PyArray_DATA(count)
    cdef int64_t *L = <int64_t *>cnp.PyArray_DATA(lat)
    cdef int64_t *Q = <int64_t *>cnp.PyArray_DATA(reqb)
    cdef int64_t *S = <int64_t *>cnp.PyArray_DATA(respb)
    cdef uint64_t h
    with nogil:
        for i in range(n):
            if not _request_key(&x[i], &k[i]):
                not_request += 1
                continue
            h = _mix_bytes(0, x[i].laddr, 16)
            h = _mix_bytes(h, x[i].raddr, 16)
            h = _mix_bytes(h, <const uint8_t *>x[i].comm, 16)
            h = _mix(h, (<uint64_t>x[i].pid << 32) | (<uint64_t>x[i].lport << 16) | x[i].rport)
            h = _mix(h, (<uint64_t>x[i].family << 56) | (<uint64_t>x[i].proto << 48)
                     | (<uint64_t>x[i].direction << 40) | (<uint64_t>x[i].status << 24)
                     | (<uint64_t>k[i].method << 16) | (<uint64_t>k[i].version << 8) | k[i].truncated)
            h = _mix_bytes(h, x[i].head + k[i].path_off, k[i].path_len)
            k[i].hash = h
            j = <Py_ssize_t>(h & mask)
            while True:
                g = T[j]
                if g < 0:
                    g = ng
                    T[j] = g
                    R[g] = i
                    ng += 1
                    total += k[i].path_len
                    break
                if _same(&x[i], &k[i], &x[R[g]], &k[R[g]]):
                    break
                j = (j + 1) & mask
            C[g] += 1
            L[g] += <int64_t>x[i].latency_ns
            Q[g] += <int64_t>x[i].req_bytes
            S[g] += <int64_t>x[i].resp_bytes
    offsets = np.empty(ng + 1, np.int32)
    data = np.empty(max(total, 1), np.uint8)
    method = np.empty(ng, np.uint8)
    version = np.empty(ng, np.uint8)
    truncated = np.empty(ng, np.uint8)
    cdef int32_t *O = <int32_t *>cnp.PyArray_DATA(offsets)
    cdef uint8_t *D = <uint8_t *>cnp.PyArray_DATA(data)
    cdef uint8_t *me = <uint8_t *>cnp.PyArray_DATA(method)
    cdef uint8_t *ve = <uint8_t *>cnp.PyArray_DATA(version)
    cdef uint8_t *tr = <uint8_t *>cnp.PyArray_DATA(truncated)
    cdef Py_ssize_t pos = 0
    with nogil:
        O[0] = 0
        for g in range(ng):
            i = R[g]
            me[g] = k[i].method
            ve[g] = k[i].version
            tr[g] = k[i].truncated
            memcpy(D + pos, x[i].head + k[i].path_off, k[i].path_len)
            pos += k[i].path_len
            O[g + 1] = <int32_t>pos
    path = pa.StringArray.from_buffers(ng, pa.py_buffer(offsets), pa.py_buffer(data[:max(pos, 1)]))
    return {"rep": rep[:ng], "method": method, "version": version, "truncated": truncated, "path": path,
            "count": count[:ng], "latency_sum": lat[:ng], "req_bytes_sum": reqb[:ng],
            "resp_bytes_sum": respb[:ng], "not_request": not_request}

"""Application trace context from captured HTTP/1.x requests -> numpy
columns, and the trace/parent id strings spans carry, without a Python
object per request.

The payload must start with an HTTP/1.x request line, as httpflow's parser
reads it (``parse_first_line``, cimported through
ext/includes/dkebpf/_http.pxd: one parser for both). Headers are the lines
after it, up to the empty line or the end of the capture; a line without ``:`` ends them (a cut or non-HTTP
payload). Header names match case-insensitively (RFC 9110 5.1: Go and
Java send ``Traceparent``, which the original missed); the first
occurrence of a name wins. Formats, in this order of precedence (the first
one present and valid is used, the rest ignored):

1. W3C ``traceparent``: ``vv-<32 hex>-<16 hex>-<2 hex>`` (version ``ff``
   invalid; a later version may append ``-...``); all-zero ids invalid;
   sampled = bit 0 of the flags.
2. B3 single ``b3``: ``<16|32 hex>-<16 hex>[-<1|0|d>[-<16 hex>]]``;
   ``d`` (debug) samples.
3. B3 multi ``x-b3-traceid``, ``x-b3-spanid``, ``x-b3-sampled`` (1/0,
   true/false), ``x-b3-flags: 1`` (debug, samples).
4. Datadog ``x-datadog-trace-id``, ``x-datadog-parent-id`` (decimal; a
   negative value is read as its int64 two's complement, as the original),
   ``x-datadog-sampling-priority`` (> 0 keep, <= 0 reject).

Columns: ``trace_hi``, ``trace_lo`` (u64 halves of the trace id),
``parent`` (the caller's span id, u64), ``sampled`` (1 keep, -1 reject, 0
no decision), ``source`` (SRC_* below; 0 none found).

``format_ids`` turns them into the strings a span carries: W3C ids as 32
and 16 lowercase hex digits, B3 ids in the width they came in, Datadog
ids in decimal; with ``conv_to_ddtrace`` every id in decimal, the trace
id being its low 64 bits (what dd-trace uses for a W3C trace).

``tests/reference/tracectx_ref.py`` holds the same rules in plain Python.
"""
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

import numpy as np
import pyarrow as pa
cimport numpy as cnp

from payloads cimport payload_view, view_payloads, payload_start
from dkebpf._http cimport http_msg, parse_first_line, K_REQUEST
# ctx_t, CTX_HEADERS, ctx_header, ctx_from_values: declared in ext/includes/dkebpf/_tracectx.pxd

cnp.import_array()

__all__ = ["extract", "format_ids", "SRC_W3C", "SRC_B3", "SRC_B3_64", "SRC_DATADOG"]

cdef enum:  # ctx_t.source; B3_64: a 64-bit B3 trace id
    C_SRC_W3C = 1
    C_SRC_B3 = 2
    C_SRC_B3_64 = 3
    C_SRC_DATADOG = 4
SRC_W3C, SRC_B3, SRC_B3_64, SRC_DATADOG = C_SRC_W3C, C_SRC_B3, C_SRC_B3_64, C_SRC_DATADOG

cdef enum:
    H_TRACEPARENT, H_B3, H_B3_TRACE, H_B3_SPAN, H_B3_SAMPLED, H_B3_FLAGS, H_DD_TRACE, H_DD_PARENT, H_DD_PRIO, H_COUNT

cdef const char *NAMES[CTX_HEADERS]
NAMES[:] = [b"traceparent", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled", b"x-b3-flags",
            b"x-datadog-trace-id", b"x-datadog-parent-id", b"x-datadog-sampling-priority"]
HEADER_NAMES = tuple(NAMES[h] for h in range(CTX_HEADERS))  # (the HPACK decoder knows them encoded)

cdef const char *HEX = b"0123456789abcdef"

cdef int8_t HEXVAL[256]  # a byte's hex digit value, -1 if none (one load per digit: 52 in a traceparent)
HEXVAL[:] = [int(chr(c), 16) if chr(c) in "0123456789abcdefABCDEF" else -1 for c in range(256)]


cdef inline int _hexval(uint8_t c) noexcept nogil:
    return HEXVAL[c]


cdef inline uint64_t _ge(uint64_t x, uint64_t lo) noexcept nogil:
    """Per byte of x (each < 0x80): 0x80 where it is >= lo, else 0 (no
    carry crosses a byte: at most 0x7F + 0x80 - lo)."""
    return (x + (0x80 - lo) * 0x0101010101010101ULL) & 0x8080808080808080ULL


cdef inline bint _hex8(const uint8_t *p, uint64_t *out) noexcept nogil:
    """The 8 hex digits p[0:8] -> out, all bytes at once (a traceparent
    has 52 digits, a table lookup and a branch each otherwise)."""
    cdef uint64_t x, y, digit, alpha, n
    memcpy(&x, p, 8)  # little-endian: the first digit in the low byte
    if x & 0x8080808080808080ULL:
        return False
    y = x | 0x2020202020202020ULL  # A-F to a-f (digits already have the bit)
    digit = _ge(x, 0x30) & ~_ge(x, 0x3A)
    alpha = _ge(y, 0x61) & ~_ge(y, 0x67)
    if (digit | alpha) != 0x8080808080808080ULL:
        return False
    n = (y & 0x0F0F0F0F0F0F0F0FULL) + (alpha >> 7) * 9  # each byte its digit's value
    n = ((n & 0x000F000F000F000FULL) << 4) | ((n >> 8) & 0x000F000F000F000FULL)  # 16-bit lanes: 2 digits
    n = ((n & 0x000000FF000000FFULL) << 8) | ((n >> 16) & 0x000000FF000000FFULL)  # 32-bit lanes: 4 digits
    out[0] = ((n & 0xFFFF) << 16) | ((n >> 32) & 0xFFFF)
    return True


cdef bint _hex(const uint8_t *p, int n, uint64_t *out) noexcept nogil:
    """p[0:n] (1..16 hex digits) -> out; False if not hex."""
    cdef uint64_t v = 0, lo
    cdef int i, d
    if n < 1 or n > 16:
        return False
    if n == 16:
        if not (_hex8(p, &v) and _hex8(p + 8, &lo)):
            return False
        out[0] = v << 32 | lo
        return True
    for i in range(n):
        d = _hexval(p[i])
        if d < 0:
            return False
        v = (v << 4) | <uint64_t>d
    out[0] = v
    return True


cdef bint _dec(const uint8_t *p, int n, uint64_t *out) noexcept nogil:
    """Decimal u64 (or negative int64, two's complement) -> out."""
    cdef uint64_t v = 0, prev
    cdef bint neg = n > 0 and p[0] == 45
    cdef int i = 1 if neg else 0
    if i >= n:
        return False
    while i < n:
        if p[i] < 48 or p[i] > 57:
            return False
        prev = v
        v = v * 10 + (p[i] - 48)
        if v / 10 != prev:  # overflow
            return False
        i += 1
    if neg:
        if v > 9223372036854775808ULL:
            return False
        v = (~v) + 1
    out[0] = v
    return True


cdef inline bint _name_is(const uint8_t *p, int n, const char *name) noexcept nogil:
    cdef int i = 0
    cdef uint8_t c
    while i < n:
        c = p[i]
        if 65 <= c <= 90:
            c += 32
        if name[i] == 0 or c != <uint8_t>name[i]:
            return False
        i += 1
    return name[n] == 0


cdef bint _traceparent(const uint8_t *v, int n, ctx_t *c) noexcept nogil:
    cdef uint64_t ver, flags
    if n < 55 or (n > 55 and v[55] != 45):
        return False
    if not _hex(v, 2, &ver) or ver == 0xff or (ver == 0 and n != 55):
        return False
    if v[2] != 45 or v[35] != 45 or v[52] != 45:
        return False
    if not (_hex(v + 3, 16, &c.hi) and _hex(v + 19, 16, &c.lo) and _hex(v + 36, 16, &c.parent)
            and _hex(v + 53, 2, &flags)):
        return False
    if (c.hi == 0 and c.lo == 0) or c.parent == 0:
        return False
    c.sampled = 1 if flags & 1 else -1
    c.source = C_SRC_W3C
    return True


cdef int8_t _b3_sampling(const uint8_t *v, int n) noexcept nogil:
    if n == 1 and (v[0] == 49 or v[0] == 100):  # 1 d
        return 1
    if n == 1 and v[0] == 48:
        return -1
    if _name_is(v, n, b"true"):
        return 1
    if _name_is(v, n, b"false"):
        return -1
    return 0


cdef bint _b3_trace(const uint8_t *v, int n, ctx_t *c) noexcept nogil:
    if n == 32:
        c.source = C_SRC_B3
        return _hex(v, 16, &c.hi) and _hex(v + 16, 16, &c.lo) and (c.hi or c.lo)
    if n == 16:
        c.source = C_SRC_B3_64
        c.hi = 0
        return _hex(v, 16, &c.lo) and c.lo != 0
    return False


cdef bint _b3_single(const uint8_t *v, int n, ctx_t *c) noexcept nogil:
    cdef int dash = 0
    while dash < n and v[dash] != 45:
        dash += 1
    if dash == n or not _b3_trace(v, dash, c):
        return False  # also a sampling-only "b3: 0": no ids to join on
    if n < dash + 17 or (n > dash + 17 and v[dash + 17] != 45):
        return False
    if not _hex(v + dash + 1, 16, &c.parent) or c.parent == 0:
        return False
    c.sampled = 0
    if n > dash + 17:  # -<sampling>[-<the caller's parent span id>]
        if n != dash + 19 and (n != dash + 36 or v[dash + 19] != 45):
            return False
        c.sampled = _b3_sampling(v + dash + 18, 1)
        if c.sampled == 0:
            return False
    return True


cdef int ctx_header(const uint8_t *p, int n) noexcept nogil:
    cdef int h
    for h in range(H_COUNT):
        if _name_is(p, n, NAMES[h]):
            return h
    return -1


cdef void _extract(const uint8_t *p, int64_t n, ctx_t *c) noexcept nogil:
    cdef int64_t i = 0, eol, colon, vs, ve
    cdef int h
    cdef const uint8_t *val[CTX_HEADERS]
    cdef int vlen[CTX_HEADERS]
    cdef http_msg m
    for h in range(H_COUNT):
        vlen[h] = -1
    c.hi = c.lo = c.parent = 0
    c.sampled = 0
    c.source = 0
    if not parse_first_line(p, <int>(n if n < 0x7fffffff else 0x7fffffff), &m) or m.kind != K_REQUEST:
        return
    while i < n and p[i] != 10:  # skip the request line
        i += 1
    i += 1
    while i < n:
        eol = i
        while eol < n and p[eol] != 10:
            eol += 1
        ve = eol
        if ve > i and p[ve - 1] == 13:
            ve -= 1
        if ve == i:
            break  # end of the headers
        colon = i
        while colon < ve and p[colon] != 58:
            colon += 1
        if colon == ve:
            break
        vs = colon + 1
        while vs < ve and (p[vs] == 32 or p[vs] == 9):
            vs += 1
        # a value cut by the capture (no line end) is not trusted
        if eol < n:
            while ve > vs and (p[ve - 1] == 32 or p[ve - 1] == 9):
                ve -= 1
            h = ctx_header(p + i, <int>(colon - i))
            if h >= 0 and vlen[h] < 0:
                val[h] = p + vs
                vlen[h] = <int>(ve - vs)
        i = eol + 1
    ctx_from_values(val, vlen, c)


cdef void ctx_from_values(const uint8_t **val, const int *vlen, ctx_t *c) noexcept nogil:
    cdef int h
    cdef int n[CTX_HEADERS]
    cdef uint64_t flags
    for h in range(H_COUNT):
        n[h] = vlen[h] if vlen[h] < 256 else 256
    c.hi = c.lo = c.parent = 0
    c.sampled = 0
    c.source = 0
    if n[H_TRACEPARENT] >= 0 and _traceparent(val[H_TRACEPARENT], n[H_TRACEPARENT], c):
        return
    if n[H_B3] >= 0 and _b3_single(val[H_B3], n[H_B3], c):
        return
    if n[H_B3_TRACE] >= 0 and n[H_B3_SPAN] >= 0 and _b3_trace(val[H_B3_TRACE], n[H_B3_TRACE], c) \
            and _hex(val[H_B3_SPAN], n[H_B3_SPAN], &c.parent) and n[H_B3_SPAN] == 16 and c.parent:
        c.sampled = 0
        if n[H_B3_SAMPLED] >= 0:
            c.sampled = _b3_sampling(val[H_B3_SAMPLED], n[H_B3_SAMPLED])
        if n[H_B3_FLAGS] == 1 and val[H_B3_FLAGS][0] == 49:
            c.sampled = 1
        return
    c.hi = c.lo = c.parent = 0
    c.source = 0
    if n[H_DD_TRACE] >= 0 and n[H_DD_PARENT] >= 0 \
            and _dec(val[H_DD_TRACE], n[H_DD_TRACE], &c.lo) and c.lo \
            and _dec(val[H_DD_PARENT], n[H_DD_PARENT], &c.parent) and c.parent:
        c.source = C_SRC_DATADOG
        c.sampled = 0
        if n[H_DD_PRIO] >= 0 and _dec(val[H_DD_PRIO], n[H_DD_PRIO], &flags):
            c.sampled = 1 if <int64_t>flags > 0 else -1
        return
    c.hi = c.lo = c.parent = 0
    c.sampled = 0
    c.source = 0


def extract(payloads):
    """Columns trace_hi, trace_lo, parent (uint64), sampled (int8), source
    (uint8) of the HTTP/1.x request in each payload (pyarrow binary)."""
    cdef payload_view pv = view_payloads(payloads)
    cols = {"trace_hi": np.zeros(pv.n, np.uint64), "trace_lo": np.zeros(pv.n, np.uint64),
            "parent": np.zeros(pv.n, np.uint64), "sampled": np.zeros(pv.n, np.int8),
            "source": np.zeros(pv.n, np.uint8)}
    cdef uint64_t[::1] hi = cols["trace_hi"], lo = cols["trace_lo"], parent = cols["parent"]
    cdef int8_t[::1] sampled = cols["sampled"]
    cdef uint8_t[::1] source = cols["source"]
    cdef Py_ssize_t j
    cdef int64_t a
    cdef ctx_t c
    with nogil:
        for j in range(pv.n):
            a = payload_start(&pv, j)
            _extract(pv.data + a, payload_start(&pv, j + 1) - a, &c)
            hi[j] = c.hi
            lo[j] = c.lo
            parent[j] = c.parent
            sampled[j] = c.sampled
            source[j] = c.source
    return cols


cdef int _put_hex(uint8_t *o, uint64_t v, int digits) noexcept nogil:
    cdef int i
    for i in range(digits - 1, -1, -1):
        o[i] = HEX[v & 15]
        v >>= 4
    return digits


cdef int _put_dec(uint8_t *o, uint64_t v) noexcept nogil:
    cdef uint8_t tmp[20]
    cdef int n = 0, i
    while True:
        tmp[n] = 48 + v % 10
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        o[i] = tmp[n - 1 - i]
    return n


def format_ids(trace_hi, trace_lo, parent, source, bint conv_to_ddtrace=False):
    """(trace_id, parent_id) pyarrow string arrays; null where source is 0."""
    cdef const uint64_t[::1] hi = np.ascontiguousarray(trace_hi, np.uint64)
    cdef const uint64_t[::1] lo = np.ascontiguousarray(trace_lo, np.uint64)
    cdef const uint64_t[::1] par = np.ascontiguousarray(parent, np.uint64)
    cdef const uint8_t[::1] src = np.ascontiguousarray(source, np.uint8)
    cdef Py_ssize_t n = hi.shape[0], j
    if not (lo.shape[0] == par.shape[0] == src.shape[0] == n):
        raise ValueError("format_ids: columns of different lengths")
    tdata = np.empty(n * 32, np.uint8)
    pdata = np.empty(n * 20, np.uint8)
    toffs = np.empty(n + 1, np.int32)
    poffs = np.empty(n + 1, np.int32)
    valid = np.empty(n, bool)
    cdef uint8_t[::1] td = tdata, pd = pdata
    cdef int32_t[::1] to = toffs, po = poffs
    cdef uint8_t[::1] ok = valid.view(np.uint8)
    cdef int32_t t = 0, q = 0
    cdef uint8_t s
    with nogil:
        for j in range(n):
            to[j] = t
            po[j] = q
            s = src[j]
            ok[j] = s != 0
            if s == 0:
                continue
            if conv_to_ddtrace or s == C_SRC_DATADOG:
                t += _put_dec(&td[t], lo[j])
                q += _put_dec(&pd[q], par[j])
            else:
                if s != C_SRC_B3_64:
                    t += _put_hex(&td[t], hi[j], 16)
                t += _put_hex(&td[t], lo[j], 16)
                q += _put_hex(&pd[q], par[j], 16)
        to[n] = t
        po[n] = q
    mask = pa.array(valid).buffers()[1] if n and not valid.all() else None
    trace_ids = pa.StringArray.from_buffers(n, pa.py_buffer(toffs), pa.py_buffer(tdata[:t]), mask)
    parent_ids = pa.StringArray.from_buffers(n, pa.py_buffer(poffs), pa.py_buffer(pdata[:q]), mask)
    return trace_ids, parent_ids

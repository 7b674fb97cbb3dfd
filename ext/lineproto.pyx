"""InfluxDB line-protocol encoder over Arrow record batches.

This is the last data-plane stage: an enriched ``pyarrow.RecordBatch`` goes
in, the body of one ``POST /v1/write/<category>?precision=ns`` to DataKit
comes out. The per-row loop reads the Arrow buffers directly (validity
bitmaps, string offsets and data, fixed-width values, found through
``Array.buffers()``) and writes, with the GIL released, into one buffer
sized before the loop from an upper bound of the output (that buffer is the
returned ``bytes`` object, shrunk to fit: no growth, no final copy); no
Python object is made per row or per cell.

Public API::

    encode_batch(measurement, batch, tags, fields, global_tags, timestamp_ns,
                 timestamp_column=None) -> (body: bytes, skipped_rows: int)
    encode_batch_stats() -> dict    # all counters of the last call in this thread

Output rules (the unit tests and ``tests/reference/lineproto_ref.py`` pin
them byte for byte):

* One line per row: ``measurement,tag=v,... field=v,... timestamp\\n``,
  timestamps in nanoseconds.
* Tags: the point's tag columns in the order given, then the global tags in
  dict order, except those whose key is also a tag or field column of the
  batch (the point's own value wins -- even on a row where that column is
  null). Integer tag columns are written in decimal. A null or empty tag
  value drops that tag from that row: line protocol has no empty tag value.
* Fields: signed and unsigned integers -> ``12i`` (DataKit wants int; an
  unsigned value above 2**63-1 saturates to 9223372036854775807, since an
  out-of-range ``i`` makes DataKit reject the whole request); floats ->
  the shortest repr that round-trips, exactly Python's ``repr(float)``;
  bools -> ``true``/``false``; strings -> ``"..."``. A null field, or a NaN
  or infinite float (line protocol has no spelling for them), is left out
  of that row. A row left with no field at all is not written: line
  protocol requires at least one field.
* Escaping follows the parser DataKit really runs (InfluxDB 1.x
  ``models``; see the 1.x ``unescapeTag``/``scanTagValue``):

  - measurement: ``,`` and space are backslash-escaped;
  - tag keys, tag values, field keys: ``,``, ``=`` and space are
    backslash-escaped;
  - in those tokens ``\\n`` and ``\\r`` become a space: the body is split
    into lines on ``\\n`` before any unescaping, and tag values have no
    escape for a newline, so a space is the closest value that survives;
  - in those tokens a *trailing* backslash also becomes a space: the 1.x
    scanner treats any delimiter preceded by ``\\`` as escaped (it tests
    ``buf[i-1] != '\\\\'``), so ``v\\`` followed by ``,`` would swallow the
    next tag and fail the whole request. Other backslashes are literal.
  - string field values: ``\\`` -> ``\\\\`` and ``"`` -> ``\\"`` (the
    standard escapes), and newline / carriage return -> the two characters
    ``\\n`` / ``\\r`` so a line never breaks. DataKit keeps those two
    characters as they are (it only unescapes ``\\\\`` and ``\\"``); our
    test parser decodes them back.

* ``timestamp_column`` (int64 nanoseconds or an Arrow timestamp) overrides
  ``timestamp_ns`` per row; a null in it falls back to ``timestamp_ns``.

Accepted column types: tags -- string, large_string, string_view, any
integer, dictionary of those, or null-typed (all null); fields -- any
integer, float16/32/64, bool, string, large_string, string_view,
dictionary of strings, or null-typed. ``batch`` may also be a
``pyarrow.Table`` (each chunk is encoded in turn). Columns may be slices
with a non-zero offset.

The number of rows skipped (no field left) comes back with the body, as
``(body, skipped_rows)``: a sender needs it to count the points it posts
(``num_rows - skipped_rows``). The other counters are in
``encode_batch_stats()``, kept per thread because encoding runs without the
GIL and several senders may encode at once.
"""

from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE,
                            _PyBytes_Resize)
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.math cimport isfinite, signbit
from libc.stdint cimport (INT64_MAX, int8_t, int16_t, int32_t, int64_t, uint8_t,
                          uint16_t, uint32_t, uint64_t, uintptr_t)
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, strtod
from libc.string cimport memcpy, memset

import threading

import pyarrow as pa
import pyarrow.types as pat

__all__ = ["encode_batch", "encode_batch_stats", "read_points"]

cdef enum:
    K_NONE = 0     # null-typed column: every value is null
    K_STR32 = 1    # string: int32 offsets
    K_STR64 = 2    # large_string: int64 offsets
    K_INT = 3
    K_UINT = 4
    K_FLOAT = 5    # float64
    K_BOOL = 6     # bit-packed

# Byte classes for keys and tag values (see module docstring).
cdef enum:
    C_PLAIN = 0
    C_ESC = 1      # written as backslash + itself
    C_SPACE = 2    # newline/CR: written as an escaped space
    C_BSLASH = 3   # literal, unless it is the last byte of the token

ctypedef struct Col:
    int kind
    int width              # bytes per value, integers only
    int64_t off            # the array's slice offset
    const uint8_t* valid   # validity bitmap, NULL when there is no null
    const uint8_t* data
    const uint8_t* offsets
    const char* key        # ",<escaped key>=" (fields skip the comma when first)
    Py_ssize_t keylen

ctypedef struct Out:
    char* p
    size_t n
    size_t cap

ctypedef struct Stats:
    int64_t lines
    int64_t skipped
    int64_t nonfinite
    int64_t saturated

cdef uint8_t TAG_CLASS[256]
cdef uint8_t MEAS_CLASS[256]
cdef uint8_t STR_CLASS[256]     # 1: escaped in a string field value
cdef char DIGITS2[200]
cdef uint64_t POW10[20]         # POW10[i] = 10**i


cdef void _init_tables() noexcept:
    cdef int i
    memset(TAG_CLASS, C_PLAIN, 256)
    TAG_CLASS[ord(',')] = C_ESC
    TAG_CLASS[ord('=')] = C_ESC
    TAG_CLASS[ord(' ')] = C_ESC
    TAG_CLASS[ord('\n')] = C_SPACE
    TAG_CLASS[ord('\r')] = C_SPACE
    TAG_CLASS[ord('\\')] = C_BSLASH
    memcpy(MEAS_CLASS, TAG_CLASS, 256)
    # the 1.x parser unescapes only "\," and "\ " in a measurement
    MEAS_CLASS[ord('=')] = C_PLAIN
    memset(STR_CLASS, 0, 256)
    STR_CLASS[ord('"')] = 1
    STR_CLASS[ord('\\')] = 1
    STR_CLASS[ord('\n')] = 1
    STR_CLASS[ord('\r')] = 1
    POW10[0] = 1
    for i in range(1, 20):
        POW10[i] = POW10[i - 1] * 10
    for i in range(100):
        DIGITS2[2 * i] = <char>(48 + i // 10)
        DIGITS2[2 * i + 1] = <char>(48 + i % 10)


_init_tables()


# ---------------------------------------------------------------- output

cdef inline int _reserve(Out* o, size_t need) noexcept nogil:
    """The output is sized from an upper bound computed before the loop
    (see _bound), so this never fails; it guards memory all the same."""
    if o.n + need <= o.cap:
        return 0
    return -1


cdef inline void _put(Out* o, const char* s, size_t n) noexcept nogil:
    memcpy(o.p + o.n, s, n)
    o.n += n


# ------------------------------------------------------------- escaping

cdef size_t _esc_token(const uint8_t* s, size_t n, char* out,
                       const uint8_t* cls) noexcept nogil:
    """Escape a measurement / key / tag value; ``out`` has room for 2*n."""
    cdef size_t i, k = 0
    cdef uint8_t c, t
    for i in range(n):                 # most values need no escaping
        if cls[s[i]] != C_PLAIN:
            break
    else:
        memcpy(out, s, n)
        return n
    memcpy(out, s, i)
    k = i
    for i in range(i, n):
        c = s[i]
        t = cls[c]
        if t == C_PLAIN:
            out[k] = <char>c
            k += 1
        elif t == C_ESC:
            out[k] = b'\\'
            out[k + 1] = <char>c
            k += 2
        elif t == C_SPACE or i + 1 == n:   # newline, or the trailing backslash
            out[k] = b'\\'
            out[k + 1] = b' '
            k += 2
        else:                              # a backslash inside the token
            out[k] = b'\\'
            k += 1
    return k


cdef size_t _esc_string(const uint8_t* s, size_t n, char* out) noexcept nogil:
    """Escape a string field value; ``out`` has room for 2*n."""
    cdef size_t i, k = 0
    cdef uint8_t c
    # copied while scanned: most values are a few bytes, and a scan then
    # a memcpy call cost more than the bytes (a span line has ~15 of them)
    for i in range(n):
        c = s[i]
        if STR_CLASS[c]:
            break
        out[i] = <char>c
    else:
        return n
    k = i
    for i in range(i, n):
        c = s[i]
        if c == b'"' or c == b'\\':
            out[k] = b'\\'
            out[k + 1] = <char>c
            k += 2
        elif c == b'\n':
            out[k] = b'\\'
            out[k + 1] = b'n'
            k += 2
        elif c == b'\r':
            out[k] = b'\\'
            out[k + 1] = b'r'
            k += 2
        else:
            out[k] = <char>c
            k += 1
    return k


cdef bytes _escape_py(str s, const uint8_t* cls):
    """Escape a token once, with the GIL (keys, measurement, global tags)."""
    cdef bytes raw = s.encode("utf-8")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef char* buf = <char*>malloc(2 * n + 1)
    cdef size_t k
    if buf == NULL:
        raise MemoryError()
    try:
        k = _esc_token(<const uint8_t*>PyBytes_AS_STRING(raw), n, buf, cls)
        return PyBytes_FromStringAndSize(buf, k)
    finally:
        free(buf)


# ------------------------------------------------------------- numbers

cdef inline size_t _fmt_u64(uint64_t v, char* out) noexcept nogil:
    # the digits counted first, then written from the last one back in
    # place (not into a scratch buffer and copied by a memcpy call)
    cdef size_t n = 1
    cdef uint64_t q
    cdef char* p
    while n < 20 and v >= POW10[n]:
        n += 1
    p = out + n
    while v >= 100:
        q = v // 100
        p -= 2
        memcpy(p, DIGITS2 + 2 * (v - q * 100), 2)
        v = q
    if v >= 10:
        p -= 2
        memcpy(p, DIGITS2 + 2 * v, 2)
    else:
        p -= 1
        p[0] = <char>(48 + v)
    return n


cdef inline size_t _fmt_i64(int64_t v, char* out) noexcept nogil:
    if v < 0:
        out[0] = b'-'
        return 1 + _fmt_u64(<uint64_t>0 - <uint64_t>v, out + 1)
    return _fmt_u64(<uint64_t>v, out)


cdef int _split_e(const char* buf, char* dg, int* exp10) noexcept nogil:
    """Digits and exponent of printf's ``%.Ne`` output (v > 0). Whatever
    sits between the first digit and the next one is the locale's radix
    character; it is skipped, so LC_NUMERIC does not matter."""
    cdef int i = 0, nd = 0, e = 0, neg = 0
    while buf[i] != 0 and buf[i] != b'e' and buf[i] != b'E':
        if b'0' <= buf[i] <= b'9':
            dg[nd] = buf[i]
            nd += 1
        i += 1
    if buf[i] != 0:
        i += 1
        if buf[i] == b'-':
            neg = 1
            i += 1
        elif buf[i] == b'+':
            i += 1
        while b'0' <= buf[i] <= b'9':
            e = e * 10 + (buf[i] - 48)
            i += 1
    exp10[0] = -e if neg else e
    return nd


cdef int _try_neighbour(double v, const char* buf, char* dg, int nd, int* exp10,
                        bint up) noexcept nogil:
    """Replace dg (p digits, the nearest p-digit decimal, which does not read
    back as v) by the next p-digit decimal on the other side of v and return
    1 if that one reads back as v. Happens only where the rounding interval
    of v is lopsided (v a power of two): the farther candidate can then be
    inside it while the nearer one is not."""
    cdef char cand[32]
    cdef char nb[80]
    cdef int i, e = exp10[0], k = 0, r
    memcpy(cand, dg, nd)
    if up:
        i = nd - 1
        while i >= 0 and cand[i] == b'9':
            cand[i] = b'0'
            i -= 1
        if i < 0:
            cand[0] = b'1'
            e += 1
        else:
            cand[i] += 1
    else:
        i = nd - 1
        while i >= 0 and cand[i] == b'0':
            cand[i] = b'9'
            i -= 1
        cand[i] -= 1          # dg is non-zero, so i >= 0
        if cand[0] == b'0':   # 10^e - one unit: p nines one decade down
            memset(cand, b'9', nd)
            e -= 1
    # rebuild "d<radix>ddd" + "e<exp>" with the radix printf used
    nb[k] = cand[0]
    k += 1
    i = 1
    while buf[i] != 0 and not (b'0' <= buf[i] <= b'9'):
        nb[k] = buf[i]
        k += 1
        i += 1
    memcpy(nb + k, cand + 1, nd - 1)
    k += nd - 1
    snprintf(nb + k, 16, "e%d", e)
    if strtod(nb, NULL) != v:
        return 0
    memcpy(dg, cand, nd)
    exp10[0] = e
    return 1


cdef int _shortest(double v, char* dg, int* exp10) noexcept nogil:
    """Shortest decimal digits that read back as v (v > 0, finite), with
    ties to the nearest -- what David Gay's dtoa mode 0 gives, hence what
    Python's repr prints. Returns the digit count, trailing zeros removed.

    For a normal double, any decimal of <= 15 significant digits that reads
    back as v is also the nearest 15-digit decimal to v (15-digit spacing is
    >= 1e-15 relative, half an ulp <= 1.1e-16), so trying 15, 16 and 17
    digits and stripping zeros is exact. Subnormals have fewer significant
    bits, so for them every length is tried."""
    cdef char buf[64]
    cdef int p, nd = 0, first = 15
    cdef double back
    if v < 2.2250738585072014e-308:
        first = 1
    for p in range(first, 18):
        snprintf(buf, 64, "%.*e", p - 1, v)
        nd = _split_e(buf, dg, exp10)
        back = strtod(buf, NULL)
        if back == v:
            break
        if p < 17 and _try_neighbour(v, buf, dg, nd, exp10, back < v):
            break
    while nd > 1 and dg[nd - 1] == b'0':
        nd -= 1
    return nd


cdef size_t _fmt_double(double v, char* out) noexcept nogil:
    """repr(v) for finite v: fixed notation when -4 <= exponent < 16 (with
    '.0' for integral values), else d.ddde+XX -- CPython's 'r' format."""
    cdef char dg[32]
    cdef int nd, e, i
    cdef size_t k = 0
    if signbit(v):
        out[0] = b'-'
        k = 1
        v = -v
    if v == 0.0:
        memcpy(out + k, b"0.0", 3)
        return k + 3
    nd = _shortest(v, dg, &e)
    if -4 <= e < 16:
        if e >= 0:
            if nd <= e + 1:
                memcpy(out + k, dg, nd)
                k += nd
                for i in range(e + 1 - nd):
                    out[k] = b'0'
                    k += 1
                memcpy(out + k, b".0", 2)
                k += 2
            else:
                memcpy(out + k, dg, e + 1)
                k += e + 1
                out[k] = b'.'
                k += 1
                memcpy(out + k, dg + e + 1, nd - e - 1)
                k += nd - e - 1
        else:
            memcpy(out + k, b"0.", 2)
            k += 2
            for i in range(-e - 1):
                out[k] = b'0'
                k += 1
            memcpy(out + k, dg, nd)
            k += nd
    else:
        out[k] = dg[0]
        k += 1
        if nd > 1:
            out[k] = b'.'
            k += 1
            memcpy(out + k, dg + 1, nd - 1)
            k += nd - 1
        out[k] = b'e'
        out[k + 1] = b'-' if e < 0 else b'+'
        k += 2
        if e < 0:
            e = -e
        if e < 10:
            out[k] = b'0'
            k += 1
        k += _fmt_u64(<uint64_t>e, out + k)
    return k


# --------------------------------------------------------- column access

cdef inline bint _is_valid(const Col* c, int64_t j) noexcept nogil:
    if c.kind == K_NONE:
        return False
    if c.valid == NULL:
        return True
    return (c.valid[j >> 3] >> (j & 7)) & 1


cdef inline int64_t _get_int(const Col* c, int64_t j) noexcept nogil:
    if c.width == 8:
        return (<const int64_t*>c.data)[j]
    if c.width == 4:
        return (<const int32_t*>c.data)[j]
    if c.width == 2:
        return (<const int16_t*>c.data)[j]
    return (<const int8_t*>c.data)[j]


cdef inline uint64_t _get_uint(const Col* c, int64_t j) noexcept nogil:
    if c.width == 8:
        return (<const uint64_t*>c.data)[j]
    if c.width == 4:
        return (<const uint32_t*>c.data)[j]
    if c.width == 2:
        return (<const uint16_t*>c.data)[j]
    return (<const uint8_t*>c.data)[j]


cdef inline int64_t _str_end(const Col* c, int64_t j) noexcept nogil:
    if c.kind == K_STR32:
        return (<const int32_t*>c.offsets)[j]
    return (<const int64_t*>c.offsets)[j]


cdef inline void _str_span(const Col* c, int64_t j, int64_t* a, int64_t* b) noexcept nogil:
    if c.kind == K_STR32:
        a[0] = (<const int32_t*>c.offsets)[j]
        b[0] = (<const int32_t*>c.offsets)[j + 1]
    else:
        a[0] = (<const int64_t*>c.offsets)[j]
        b[0] = (<const int64_t*>c.offsets)[j + 1]


cdef size_t _bound(const Col* c, int64_t nrows, bint field) noexcept:
    """Most bytes column c can add to nrows lines: the key on every row plus
    the longest text of each value (escaping at most doubles a string)."""
    cdef size_t per_row = c.keylen, total = 0
    cdef int64_t a, b
    if c.kind == K_NONE or nrows == 0:
        return 0
    if c.kind == K_STR32 or c.kind == K_STR64:
        _str_span(c, c.off, &a, &b)
        total = 2 * <size_t>(_str_end(c, c.off + nrows) - a)
        if field:
            per_row += 2               # the quotes
    elif c.kind == K_FLOAT:
        per_row += 24                  # repr: at most "-1.2345678901234567e-308"
    elif c.kind == K_BOOL:
        per_row += 5
    else:
        per_row += 21                  # "-9223372036854775808", or 20 digits, + "i"
    return total + per_row * <size_t>nrows


cdef int _encode_rows(Out* o, Stats* st, int64_t nrows, const char* meas, size_t meas_len,
                      const char* glob, size_t glob_len, Col* tags, int ntags,
                      Col* fields, int nfields, Col* ts, int64_t ts_default) noexcept nogil:
    """The per-row loop. Returns -1 if the output bound was too small."""
    cdef int64_t i, j, a, b, ts_val
    cdef size_t row_start
    cdef int t
    cdef bint first
    cdef const Col* c
    cdef double dv
    cdef uint64_t uv
    for i in range(nrows):
        row_start = o.n
        # every reservation below stays within what _bound counted
        if _reserve(o, meas_len) < 0:
            return -1
        _put(o, meas, meas_len)
        for t in range(ntags):
            c = &tags[t]
            j = c.off + i
            if not _is_valid(c, j):
                continue
            if c.kind == K_STR32 or c.kind == K_STR64:
                _str_span(c, j, &a, &b)
                if b == a:
                    continue
                if _reserve(o, c.keylen + 2 * <size_t>(b - a)) < 0:
                    return -1
                _put(o, c.key, c.keylen)
                o.n += _esc_token(c.data + a, <size_t>(b - a), o.p + o.n, TAG_CLASS)
            else:
                if _reserve(o, c.keylen + 20) < 0:
                    return -1
                _put(o, c.key, c.keylen)
                if c.kind == K_INT:
                    o.n += _fmt_i64(_get_int(c, j), o.p + o.n)
                else:
                    o.n += _fmt_u64(_get_uint(c, j), o.p + o.n)
        if _reserve(o, glob_len + 1) < 0:
            return -1
        _put(o, glob, glob_len)
        o.p[o.n] = b' '
        o.n += 1
        first = True
        for t in range(nfields):
            c = &fields[t]
            j = c.off + i
            if not _is_valid(c, j):
                continue
            if c.kind == K_FLOAT:
                dv = (<const double*>c.data)[j]
                if not isfinite(dv):
                    st.nonfinite += 1
                    continue
                if _reserve(o, c.keylen + 24) < 0:
                    return -1
                if first:
                    _put(o, c.key + 1, c.keylen - 1)
                else:
                    _put(o, c.key, c.keylen)
                o.n += _fmt_double(dv, o.p + o.n)
            elif c.kind == K_STR32 or c.kind == K_STR64:
                _str_span(c, j, &a, &b)
                if _reserve(o, c.keylen + 2 * <size_t>(b - a) + 2) < 0:
                    return -1
                if first:
                    _put(o, c.key + 1, c.keylen - 1)
                else:
                    _put(o, c.key, c.keylen)
                o.p[o.n] = b'"'
                o.n += 1
                o.n += _esc_string(c.data + a, <size_t>(b - a), o.p + o.n)
                o.p[o.n] = b'"'
                o.n += 1
            else:
                if _reserve(o, c.keylen + (5 if c.kind == K_BOOL else 21)) < 0:
                    return -1
                if first:
                    _put(o, c.key + 1, c.keylen - 1)
                else:
                    _put(o, c.key, c.keylen)
                if c.kind == K_INT:
                    o.n += _fmt_i64(_get_int(c, j), o.p + o.n)
                    o.p[o.n] = b'i'
                    o.n += 1
                elif c.kind == K_UINT:
                    uv = _get_uint(c, j)
                    if uv > <uint64_t>INT64_MAX:
                        uv = <uint64_t>INT64_MAX
                        st.saturated += 1
                    o.n += _fmt_u64(uv, o.p + o.n)
                    o.p[o.n] = b'i'
                    o.n += 1
                elif (c.data[j >> 3] >> (j & 7)) & 1:
                    _put(o, "true", 4)
                else:
                    _put(o, "false", 5)
            first = False
        if first:                      # no field left: line protocol forbids it
            o.n = row_start
            st.skipped += 1
            continue
        ts_val = ts_default
        if ts != NULL:
            j = ts.off + i
            if _is_valid(ts, j):
                ts_val = (<const int64_t*>ts.data)[j]
        if _reserve(o, 22) < 0:
            return -1
        o.p[o.n] = b' '
        o.n += 1
        o.n += _fmt_i64(ts_val, o.p + o.n)
        o.p[o.n] = b'\n'
        o.n += 1
        st.lines += 1
    return 0


# ------------------------------------------------------ Python-level glue

_tls = threading.local()

_STAT_KEYS = ("rows", "lines", "skipped_rows", "nonfinite_floats", "saturated_uints", "bytes")


def encode_batch_stats():
    """Counters of the last ``encode_batch`` call made by this thread:

    ``rows`` (rows in the batch), ``lines`` (lines written),
    ``skipped_rows`` (rows not written because no field was left),
    ``nonfinite_floats`` (NaN/inf float cells left out),
    ``saturated_uints`` (unsigned values clamped to 2**63-1),
    ``bytes`` (length of the body).
    """
    return dict(getattr(_tls, "stats", None) or dict.fromkeys(_STAT_KEYS, 0))


cdef const uint8_t* _ptr(object buf) except? NULL:
    """Address of an Arrow buffer's bytes (zero copy); the caller keeps the
    Array, hence the buffer, alive while the pointer is in use."""
    if buf is None or buf.size == 0:
        return NULL
    if not buf.is_cpu:
        raise ValueError("Arrow buffer is not in CPU memory")
    return <const uint8_t*><uintptr_t>buf.address


def _column(batch, str name, str role):
    idx = batch.schema.get_all_field_indices(name)
    if len(idx) == 0:
        raise ValueError(f"{role} column {name!r} is not in the batch "
                         f"(columns: {', '.join(batch.schema.names)})")
    if len(idx) > 1:
        raise ValueError(f"{role} column {name!r} appears {len(idx)} times in the batch")
    return batch.column(idx[0])


def _normalise(arr, str name, str role):
    """Cast the few types the loop does not read directly (once per column)."""
    t = arr.type
    if pat.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pat.is_string_view(t):
        arr = arr.cast(pa.large_string())
    elif role == "field" and (pat.is_float16(t) or pat.is_float32(t)):
        arr = arr.cast(pa.float64())
    t = arr.type
    ok = (pat.is_string(t) or pat.is_large_string(t) or pat.is_integer(t) or pat.is_null(t))
    if role == "field":
        ok = ok or pat.is_float64(t) or pat.is_boolean(t)
    if not ok:
        raise TypeError(f"{role} column {name!r} has type {t}, which line protocol "
                        f"encoding does not support")
    return arr


cdef void _fill_col(Col* c, object arr, list keep) except *:
    t = arr.type
    bufs = arr.buffers()
    keep.append(bufs)
    c.off = arr.offset
    c.valid = NULL
    c.data = NULL
    c.offsets = NULL
    c.width = 0
    if pat.is_null(t):
        c.kind = K_NONE
        return
    if arr.null_count > 0:
        c.valid = _ptr(bufs[0])
    if pat.is_string(t) or pat.is_large_string(t):
        c.kind = K_STR32 if pat.is_string(t) else K_STR64
        c.offsets = _ptr(bufs[1])
        c.data = _ptr(bufs[2])
    elif pat.is_boolean(t):
        c.kind = K_BOOL
        c.data = _ptr(bufs[1])
    elif pat.is_float64(t):
        c.kind = K_FLOAT
        c.data = _ptr(bufs[1])
    else:
        c.kind = K_UINT if pat.is_unsigned_integer(t) else K_INT
        c.width = t.bit_width // 8
        c.data = _ptr(bufs[1])
    if len(arr) > 0 and c.data == NULL and c.kind != K_STR32 and c.kind != K_STR64:
        raise ValueError("column has no data buffer")


def encode_batch(measurement, batch, tags, fields, global_tags, timestamp_ns,
                 timestamp_column=None):
    """Encode ``batch`` as InfluxDB line protocol for DataKit.

    :param measurement: measurement name (``str``, not empty).
    :param batch: ``pyarrow.RecordBatch`` (or ``Table``).
    :param tags: names of the tag columns, written in this order.
    :param fields: names of the field columns, written in this order.
    :param global_tags: ``{key: value}`` added to every line after the
        point's tags, unless the batch has a tag or field column of that
        name (the point's own value wins); empty values are left out.
    :param timestamp_ns: timestamp of every line, in ns since the epoch.
    :param timestamp_column: optional int64-ns (or timestamp) column whose
        non-null values override ``timestamp_ns`` per row.
    :returns: ``(body, skipped_rows)``: the body, ``bytes``, with one
        ``\\n``-terminated line per row that kept at least one field, and
        the number of rows not written because no field was left (so the
        body holds ``batch.num_rows - skipped_rows`` points). More counters
        of this call: ``encode_batch_stats()``, in the calling thread.

    See the module docstring for the exact escaping rules.
    """
    if isinstance(batch, pa.Table):
        total = dict.fromkeys(_STAT_KEYS, 0)
        parts = []
        for rb in batch.to_batches():
            parts.append(encode_batch(measurement, rb, tags, fields, global_tags,
                                      timestamp_ns, timestamp_column)[0])
            for name, count in encode_batch_stats().items():
                total[name] += count
        body = b"".join(parts)
        total["rows"] = batch.num_rows
        total["bytes"] = len(body)
        _tls.stats = total
        return body, total["skipped_rows"]
    if not isinstance(batch, pa.RecordBatch):
        raise TypeError(f"batch must be a pyarrow.RecordBatch or Table, not {type(batch).__name__}")
    if not isinstance(measurement, str) or not measurement:
        raise ValueError("measurement must be a non-empty str")
    if measurement[0] == "#":
        raise ValueError(f"measurement {measurement!r} starts with '#': line protocol "
                         f"reads that line as a comment")
    tags = list(tags)
    fields = list(fields)
    if not fields:
        raise ValueError("at least one field column is required: line protocol "
                         "has no point without a field")
    for role, names in (("tag", tags), ("field", fields)):
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{role} column names must be non-empty str, got {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate {role} column in {names!r}")
    both = set(tags) & set(fields)
    if both:
        raise ValueError(f"columns {sorted(both)!r} are given as both tags and fields")
    cdef int64_t ts_default = timestamp_ns

    # pre-format everything that is the same on every row
    cdef bytes meas_b = _escape_py(measurement, MEAS_CLASS)
    glob_parts = []
    for gkey, gval in dict(global_tags or {}).items():
        if not isinstance(gkey, str) or not isinstance(gval, str):
            raise TypeError(f"global tag {gkey!r}={gval!r}: keys and values must be str")
        if not gkey:
            raise ValueError("global tag with an empty key")
        if gkey in tags or gkey in fields or not gval:
            continue
        glob_parts.append(b"," + _escape_py(gkey, TAG_CLASS) + b"=" + _escape_py(gval, TAG_CLASS))
    cdef bytes glob_b = b"".join(glob_parts)

    cdef int ntags = len(tags)
    cdef int nfields = len(fields)
    cdef int64_t nrows = batch.num_rows
    cdef list keep = []
    cdef Col* cols = NULL
    cdef Col ts_col
    cdef Col* ts_ptr = NULL
    cdef Out o
    cdef Stats st
    cdef int rc, ci
    cdef size_t bound
    cdef bytes key
    cdef PyObject* raw
    cdef const char* meas_p = PyBytes_AS_STRING(meas_b)
    cdef size_t meas_len = PyBytes_GET_SIZE(meas_b)
    cdef const char* glob_p = PyBytes_AS_STRING(glob_b)
    cdef size_t glob_len = PyBytes_GET_SIZE(glob_b)

    o.p = NULL
    o.n = 0
    o.cap = 0
    if nrows == 0:
        _tls.stats = dict.fromkeys(_STAT_KEYS, 0)
        return b"", 0
    memset(&st, 0, sizeof(Stats))
    cols = <Col*>malloc((ntags + nfields) * sizeof(Col))
    if cols == NULL:
        raise MemoryError()
    try:
        # meas, globals, two spaces, a 20-character timestamp and "\n"
        bound = (meas_len + glob_len + 23) * <size_t>nrows
        for ci, name in enumerate(tags + fields):
            role = "tag" if ci < ntags else "field"
            arr = _normalise(_column(batch, name, role), name, role)
            _fill_col(&cols[ci], arr, keep)
            key = b"," + _escape_py(name, TAG_CLASS) + b"="
            keep.append(key)
            cols[ci].key = PyBytes_AS_STRING(key)
            cols[ci].keylen = PyBytes_GET_SIZE(key)
            bound += _bound(&cols[ci], nrows, ci >= ntags)
        if timestamp_column is not None:
            arr = _column(batch, timestamp_column, "timestamp")
            if pat.is_timestamp(arr.type):
                arr = arr.cast(pa.timestamp("ns")).cast(pa.int64())
            if not pat.is_int64(arr.type):
                raise TypeError(f"timestamp column {timestamp_column!r} has type {arr.type}; "
                                f"int64 nanoseconds or timestamp expected")
            _fill_col(&ts_col, arr, keep)
            ts_ptr = &ts_col
        # Write straight into a bytes object sized from the upper bound and
        # shrink it at the end: no copy of the body, no growth in the loop.
        # Pages past the real length are never touched, so the slack costs
        # address space only.
        body = PyBytes_FromStringAndSize(NULL, bound)
        o.p = PyBytes_AS_STRING(body)
        o.cap = bound
        with nogil:
            rc = _encode_rows(&o, &st, nrows, meas_p, meas_len, glob_p, glob_len,
                              cols, ntags, cols + ntags, nfields, ts_ptr, ts_default)
        if rc < 0:
            raise RuntimeError(f"lineproto: output bound {bound} too small for {nrows} rows "
                               f"of {measurement!r} (a bug in _bound)")
        raw = <PyObject*>body
        Py_INCREF(body)
        body = None                       # raw now holds the only reference,
        _PyBytes_Resize(&raw, o.n)        # as _PyBytes_Resize requires
        body = <object>raw
        Py_DECREF(body)
    finally:
        free(cols)
    _tls.stats = {"rows": nrows, "lines": st.lines, "skipped_rows": st.skipped,
                  "nonfinite_floats": st.nonfinite, "saturated_uints": st.saturated,
                  "bytes": len(body)}
    return body, st.skipped


# ================================================================= reading
#
# read_points(body, required, timestamp_ns) -> (table, rejected, errors):
# the points of a line-protocol body as Arrow columns, one per tag or field
# key met (in order of first appearance), plus ``time``. The rules are those
# of the independent test parser (tests/support/lineproto_parser.py), which
# the unit tests hold it to, with what a columnar form adds:
#
# * a tag is a string column; a field's column takes the type of the first
#   accepted line that has it: int64 (``12i``, and ``12u`` up to 2**63-1),
#   float64, bool or string; a later line whose value is of another type is
#   rejected (naming both types), as is a line with a key both as tag and as
#   field;
# * ``required`` ({key: "string" | "int" | "float" | "bool"}): a line
#   without one of them, or with another type, is rejected;
# * strings that are not valid UTF-8 are repaired the project's one way
#   (utf8.pxd: U+FFFD per maximal ill-formed subpart), never rejected;
# * the measurement is checked, not kept (the caller knows what it reads).
#
# A bad line is counted and skipped, the rest of the body kept; the first
# few errors come back as "line N, column C: what: 'the line'". One pass
# over the body with the GIL released, values written straight into column
# buffers: no Python object per line or value.

from libc.stdlib cimport calloc, realloc
from libc.string cimport memchr, memcmp, strlen
from utf8 cimport utf8_seq_len, utf8_cont_ok, utf8_replace_invalid
from bytebuf cimport bytebuf, bytebuf_reserve

cdef enum:  # reader column kinds; RK_NONE: no accepted line had it yet
    RK_NONE = 0
    RK_STR = 1
    RK_INT = 2
    RK_FLOAT = 3
    RK_BOOL = 4

READ_KINDS = {"string": RK_STR, "int": RK_INT, "float": RK_FLOAT, "bool": RK_BOOL}
_KIND_TEXT = ("", "a string", "an integer", "a float", "a boolean")

cdef enum:
    MAX_KEYS = 1024       # distinct keys a body may use
    HASH_SLOTS = 4096     # open addressing, a power of two > 2 * MAX_KEYS
    MAX_ERRORS = 3        # error messages kept (all are counted)
    MAX_LINE = 1 << 20    # longer lines are rejected (the line's scratch is 4x its length)

cdef enum:  # reader errors (messages in _READ_ERRORS, formatted after the pass)
    R_MEAS = 1
    R_TAGKEY_EMPTY
    R_TAG_NOEQ
    R_TAGVAL_EMPTY
    R_UNESC_TAGKEY
    R_UNESC_TAGVAL
    R_UNESC_FIELDKEY
    R_NOSPACE
    R_FIELDKEY_EMPTY
    R_FIELD_NOEQ
    R_UNTERMINATED
    R_MISSING_VALUE
    R_BAD_VALUE
    R_INT_RANGE
    R_FLOAT_RANGE
    R_AFTER_VALUE
    R_TIMESTAMP
    R_TIMESTAMP_RANGE
    R_DUPLICATE
    R_TYPE
    R_REQUIRED_TYPE
    R_REQUIRED_MISSING
    R_TOO_MANY_KEYS
    R_LINE_TOO_LONG

_READ_ERRORS = {
    R_MEAS: "missing measurement", R_TAGKEY_EMPTY: "empty tag key",
    R_TAG_NOEQ: "tag {key!r} has no '=' and value", R_TAGVAL_EMPTY: "empty value of tag {key!r}",
    R_UNESC_TAGKEY: "unescaped {ch!r} in tag key", R_UNESC_TAGVAL: "unescaped {ch!r} in value of tag {key!r}",
    R_UNESC_FIELDKEY: "unescaped {ch!r} in field key", R_NOSPACE: "expected a space and the field set",
    R_FIELDKEY_EMPTY: "empty field key", R_FIELD_NOEQ: "field {key!r} has no '=' and value",
    R_UNTERMINATED: "unterminated string value of field {key!r}",
    R_MISSING_VALUE: "missing value of field {key!r}",
    R_BAD_VALUE: "invalid value {tok!r} of field {key!r} (expected a quoted string, an integer with i or u, "
                 "a float or a boolean)",
    R_INT_RANGE: "integer {tok!r} of field {key!r} is out of the int64 range",
    R_FLOAT_RANGE: "float {tok!r} of field {key!r} is out of range",
    R_AFTER_VALUE: "unexpected {ch!r} after the value of field {key!r}",
    R_TIMESTAMP: "invalid timestamp {tok!r}", R_TIMESTAMP_RANGE: "timestamp {tok!r} is out of the int64 range",
    R_DUPLICATE: "duplicate key {key!r} (tag and field keys of a line are one set)",
    R_TYPE: "{key!r} is {kind} here and {want} on earlier lines",
    R_REQUIRED_TYPE: "{key!r} is {kind}, {want} is required",
    R_REQUIRED_MISSING: "required field {key!r} ({want}) missing",
    R_TOO_MANY_KEYS: "more than {max_keys} distinct keys in one body",
    R_LINE_TOO_LONG: "line longer than {max_line} bytes",
}

ctypedef struct RCol:
    int64_t key_off        # unescaped key in the reader's key store
    int keylen
    uint64_t hash
    int kind               # RK_*; RK_NONE until an accepted line types it
    int required           # the kind a required key must have, else 0
    int64_t line_seen      # the last line naming it (duplicate check)
    uint8_t* valid         # a byte per row
    int64_t* vals          # int64 / float64 bits / bool per row
    int32_t* offs          # strings: rows + 1 offsets into data
    int64_t filled         # offs written for rows < filled
    bytebuf data

ctypedef struct RVal:      # one value of the line being read
    int col
    int kind
    int64_t iv             # int, bool, or the bits of a float
    const uint8_t* s       # string
    int64_t slen
    int64_t pos            # where it starts in the line (errors)

ctypedef struct RErr:
    int code
    int64_t lineno, col    # 1-based line, 0-based column
    int64_t line_off, line_len
    char key[120]          # the key and the value in question, cut
    int key_len, tok_len
    char tok[120]
    uint8_t ch
    int kind, want

ctypedef struct Reader:
    const uint8_t* body
    int64_t n
    int64_t max_rows
    int64_t rows
    int64_t* times
    int64_t ts_default
    RCol* cols
    int ncols
    int32_t slots[HASH_SLOTS]   # column + 1; 0 empty
    int* pred                   # column of the k-th key of the last accepted line
    int npred
    bytebuf keys
    RVal* vals
    int nvals, capvals
    bytebuf scratch                # unescaped / repaired text of the current line
    int64_t rejected
    RErr errors[MAX_ERRORS]
    int nerrors
    int nomem
    int required[16]            # columns of the required keys
    int nrequired


cdef inline uint64_t _fnv(const uint8_t* p, int64_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef int64_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h


cdef int _key_column(Reader* r, const uint8_t* key, int64_t n, int position) noexcept nogil:
    """Index of the column named key[0:n], made if new; -1 when there are
    MAX_KEYS already, -2 out of memory. position: the key's place in the
    line, to try the previous line's key there first."""
    cdef int c
    cdef uint64_t h
    cdef uint32_t slot
    cdef RCol* col
    if position < r.npred:
        c = r.pred[position]
        col = &r.cols[c]
        if col.keylen == n and memcmp(r.keys.p + col.key_off, key, n) == 0:
            return c
    h = _fnv(key, n)
    slot = <uint32_t>(h & (HASH_SLOTS - 1))
    while r.slots[slot]:
        c = r.slots[slot] - 1
        col = &r.cols[c]
        if col.hash == h and col.keylen == n and memcmp(r.keys.p + col.key_off, key, n) == 0:
            return c
        slot = (slot + 1) & (HASH_SLOTS - 1)
    if r.ncols == MAX_KEYS:
        return -1
    if bytebuf_reserve(&r.keys, n + 1) < 0:
        return -2
    c = r.ncols
    r.ncols += 1
    col = &r.cols[c]
    memset(col, 0, sizeof(RCol))
    col.key_off = r.keys.n
    col.keylen = <int>n
    col.hash = h
    col.line_seen = -1
    memcpy(r.keys.p + r.keys.n, key, n)
    r.keys.n += n
    r.slots[slot] = c + 1
    return c


cdef int _type_column(Reader* r, RCol* col, int kind) noexcept nogil:
    col.kind = kind
    col.valid = <uint8_t*>calloc(r.max_rows + 1, 1)
    if col.valid == NULL:
        return -1
    if kind == RK_STR:
        col.offs = <int32_t*>calloc(r.max_rows + 1, sizeof(int32_t))
        return 0 if col.offs != NULL else -1
    col.vals = <int64_t*>calloc(r.max_rows + 1, sizeof(int64_t))
    return 0 if col.vals != NULL else -1


cdef bint _utf8_ok(const uint8_t* p, int64_t n) noexcept nogil:
    cdef int64_t i = 0
    cdef int k, need
    cdef uint8_t lead
    while i < n:
        lead = p[i]
        if lead < 0x80:
            i += 1
            continue
        need = utf8_seq_len(lead)
        if need == 0 or i + need > n:
            return False
        for k in range(1, need):
            if not utf8_cont_ok(lead, k, p[i + k]):
                return False
        i += need
    return True


cdef inline void _text(Reader* r, const uint8_t** s, int64_t* n) noexcept nogil:
    """Repair invalid UTF-8 in s[0:n] (into the line's scratch)."""
    cdef int64_t i
    cdef uint8_t* out = r.scratch.p + r.scratch.n
    for i in range(n[0]):
        if s[0][i] >= 0x80:
            break
    else:
        return
    if _utf8_ok(s[0], n[0]):
        return
    n[0] = utf8_replace_invalid(s[0], n[0], out)
    s[0] = out
    r.scratch.n += n[0]


cdef enum:  # byte classes of the token scanner
    T_PLAIN = 0
    T_BACKSLASH = 1
    T_STOP = 2
    T_BAD = 3      # may not stand unescaped in the token
    T_HIGH = 4     # >= 0x80: the token's UTF-8 is checked

cdef uint8_t T_MEAS[256]     # measurement: stops at ',' ' '
cdef uint8_t T_KEY[256]      # tag or field key: stops at '=', ',' and ' ' bad
cdef uint8_t T_TAGVAL[256]   # tag value: stops at ',' ' ', '=' bad


cdef void _init_reader_tables() noexcept:
    cdef int c
    for c in range(256):
        T_MEAS[c] = T_KEY[c] = T_TAGVAL[c] = T_HIGH if c >= 0x80 else T_PLAIN
    T_MEAS[92] = T_KEY[92] = T_TAGVAL[92] = T_BACKSLASH
    T_MEAS[44] = T_MEAS[32] = T_STOP
    T_KEY[61] = T_STOP
    T_KEY[44] = T_KEY[32] = T_BAD
    T_TAGVAL[44] = T_TAGVAL[32] = T_STOP
    T_TAGVAL[61] = T_BAD


_init_reader_tables()


cdef int64_t _token(Reader* r, const uint8_t* s, int64_t i, int64_t n, const uint8_t* cls, bint meas,
                    const uint8_t** out, int64_t* outlen, uint8_t* badch, bint* high) noexcept nogil:
    """An escaped token from s[i] up to an unescaped T_STOP byte of cls ->
    out/outlen (in place when it has no escape, else unescaped into the
    scratch); returns where it stopped, or -2 - i at an unescaped T_BAD
    byte s[i] (then badch). high: a byte >= 0x80 was met."""
    cdef int64_t a = i, k
    cdef uint8_t c, e, t
    cdef uint8_t* o
    cdef bint escaped = False
    while i < n:
        t = cls[s[i]]
        if t == T_PLAIN:
            i += 1
        elif t == T_HIGH:
            high[0] = True
            i += 1
        elif t == T_BACKSLASH:
            if i + 1 < n:
                e = s[i + 1]
                if e == 44 or e == 32 or (e == 61 and not meas):
                    escaped = True
                    i += 2
                    continue
            i += 1
        elif t == T_STOP:
            break
        else:
            badch[0] = s[i]
            return -2 - i
    if not escaped:
        out[0] = s + a
        outlen[0] = i - a
        return i
    o = r.scratch.p + r.scratch.n
    k = 0
    while a < i:
        c = s[a]
        if c == 92 and a + 1 < i and (s[a + 1] == 44 or s[a + 1] == 32 or (s[a + 1] == 61 and not meas)):
            o[k] = s[a + 1]
            a += 2
        else:
            o[k] = c
            a += 1
        k += 1
    out[0] = o
    outlen[0] = k
    r.scratch.n += k
    return i


cdef void _fail(Reader* r, int code, int64_t lineno, const uint8_t* line, int64_t linelen, int64_t col,
                const uint8_t* key, int64_t keylen, const uint8_t* tok, int64_t toklen, uint8_t ch,
                int kind, int want) noexcept nogil:
    cdef RErr* e
    r.rejected += 1
    if r.nerrors == MAX_ERRORS:
        return
    e = &r.errors[r.nerrors]
    r.nerrors += 1
    e.code = code
    e.lineno = lineno
    e.col = col
    e.line_off = line - r.body
    e.line_len = linelen
    e.key_len = <int>(keylen if keylen < 120 else 120) if key != NULL else 0
    e.tok_len = <int>(toklen if toklen < 120 else 120) if tok != NULL else 0
    if e.key_len:
        memcpy(e.key, key, e.key_len)
    if e.tok_len:
        memcpy(e.tok, tok, e.tok_len)
    e.ch = ch
    e.kind = kind
    e.want = want


cdef int64_t _parse_int(const uint8_t* p, int64_t n, bint allow_neg, uint64_t limit_pos, uint64_t limit_neg,
                        int64_t* out) noexcept nogil:
    """Decimal digits (optionally signed) -> out; 1 ok, 0 not a number,
    -1 out of range."""
    cdef int64_t i = 0
    cdef bint neg = False, over = False
    cdef uint64_t v = 0, d
    if n > 0 and p[0] == 45 and allow_neg:
        neg = True
        i = 1
    if i == n:
        return 0
    while i < n:
        d = <uint64_t>p[i] - 48
        if d > 9:
            return 0
        if v > 1844674407370955161ULL or (v == 1844674407370955161ULL and d > 5):  # v * 10 + d > 2**64 - 1
            over = True
        v = v * 10 + d
        i += 1
    if over or v > (limit_neg if neg else limit_pos):
        return -1
    out[0] = <int64_t>(0 - v) if neg else <int64_t>v
    return 1


cdef int _float_text(const uint8_t* p, int64_t n) noexcept nogil:
    """Does p[0:n] match -?(digits[.digits*] | .digits)([eE][-+]?digits)?"""
    cdef int64_t i = 0, d = 0
    if i < n and p[i] == 45:
        i += 1
    while i < n and 48 <= p[i] <= 57:
        i += 1
        d += 1
    if i < n and p[i] == 46:
        i += 1
        while i < n and 48 <= p[i] <= 57:
            i += 1
            d += 1
    if d == 0:
        return 0
    if i < n and (p[i] == 101 or p[i] == 69):
        i += 1
        if i < n and (p[i] == 43 or p[i] == 45):
            i += 1
        if i == n or not 48 <= p[i] <= 57:
            return 0
        while i < n and 48 <= p[i] <= 57:
            i += 1
    return i == n


cdef inline bint _word(const uint8_t* p, int64_t n, const char* w) noexcept nogil:
    return n == <int64_t>strlen(w) and memcmp(p, w, n) == 0


cdef int64_t _key(Reader* r, const uint8_t* s, int64_t i, int64_t n, int64_t lineno, bint tag,
                  const uint8_t** key, int64_t* keylen, bint* high) noexcept nogil:
    """The tag or field key from s[i] up to its '=' -> key; where the '='
    is, or -1 after a _fail."""
    cdef uint8_t ch = 0
    cdef int64_t res = _token(r, s, i, n, T_KEY, False, key, keylen, &ch, high)
    if res < -1:
        _fail(r, R_UNESC_TAGKEY if tag else R_UNESC_FIELDKEY, lineno, s, n, -2 - res, NULL, 0, NULL, 0, ch, 0, 0)
    elif keylen[0] == 0:
        _fail(r, R_TAGKEY_EMPTY if tag else R_FIELDKEY_EMPTY, lineno, s, n, res, NULL, 0, NULL, 0, 0, 0, 0)
    elif res >= n:
        _fail(r, R_TAG_NOEQ if tag else R_FIELD_NOEQ, lineno, s, n, res, key[0], keylen[0], NULL, 0, 0, 0, 0)
    else:
        return res
    return -1


cdef int _line(Reader* r, const uint8_t* s, int64_t n, int64_t lineno) noexcept nogil:
    """Read one line (no '\\n'); 1 accepted, 0 rejected, -1 out of memory."""
    cdef int64_t i = 0, j, a, res, ts = r.ts_default, v, kstart
    cdef const uint8_t* nl
    cdef const uint8_t* key = NULL
    cdef int64_t keylen = 0
    cdef const uint8_t* val
    cdef int64_t vlen
    cdef uint8_t ch = 0, c
    cdef int nkeys = 0, kind
    cdef bint high = False  # a byte >= 0x80 in the line: strings get their UTF-8 checked
    cdef double dv
    cdef char num[72]
    cdef char* numbuf
    if n > MAX_LINE:
        _fail(r, R_LINE_TOO_LONG, lineno, s, 200, 0, NULL, 0, NULL, 0, 0, 0, 0)
        return 0
    r.scratch.n = 0  # unescaped tokens (<= n in all) and their UTF-8 repairs (<= 3 n)
    if bytebuf_reserve(&r.scratch, 4 * n + 80) < 0:
        return -1
    r.nvals = 0
    while i < n and (s[i] == 32 or s[i] == 9):
        i += 1
    # measurement (checked, not kept)
    res = _token(r, s, i, n, T_MEAS, True, &val, &vlen, &ch, &high)
    if vlen == 0:
        _fail(r, R_MEAS, lineno, s, n, res, NULL, 0, NULL, 0, 0, 0, 0)
        return 0
    i = res
    # tags
    while i < n and s[i] == 44:
        kstart = i + 1
        i = _key(r, s, i + 1, n, lineno, True, &key, &keylen, &high)
        if i < 0:
            return 0
        res = _token(r, s, i + 1, n, T_TAGVAL, False, &val, &vlen, &ch, &high)
        if res < -1:
            _fail(r, R_UNESC_TAGVAL, lineno, s, n, -2 - res, key, keylen, NULL, 0, ch, 0, 0)
            return 0
        i = res
        if vlen == 0:
            _fail(r, R_TAGVAL_EMPTY, lineno, s, n, i, key, keylen, NULL, 0, 0, 0, 0)
            return 0
        if _add_value(r, key, keylen, nkeys, RK_STR, 0, val, vlen, kstart, lineno, s, n, high) <= 0:
            return 0 if not r.nomem else -1
        nkeys += 1
    if i >= n or s[i] != 32:
        _fail(r, R_NOSPACE, lineno, s, n, i, NULL, 0, NULL, 0, 0, 0, 0)
        return 0
    while i < n and s[i] == 32:
        i += 1
    # fields
    while True:
        kstart = i
        i = _key(r, s, i, n, lineno, False, &key, &keylen, &high)
        if i < 0:
            return 0
        i += 1
        if i < n and s[i] == 34:  # a string
            a = i
            # most strings have no backslash before their closing quote: read in place
            nl = <const uint8_t*>memchr(s + i + 1, 34, n - i - 1)
            if nl != NULL and memchr(s + i + 1, 92, nl - s - i - 1) == NULL:
                val = s + i + 1
                vlen = nl - val
                j = nl - s
                for v in range(vlen):
                    if val[v] >= 0x80:
                        high = True
                        break
            else:
                j = i + 1
                vlen = 0
                val = r.scratch.p + r.scratch.n
                while j < n:
                    c = s[j]
                    if c == 92 and j + 1 < n and (s[j + 1] == 34 or s[j + 1] == 92 or s[j + 1] == 110
                                                  or s[j + 1] == 114):
                        c = s[j + 1]
                        (<uint8_t*>val)[vlen] = 10 if c == 110 else 13 if c == 114 else c
                        vlen += 1
                        j += 2
                        continue
                    if c == 34:
                        break
                    if c >= 0x80:
                        high = True
                    (<uint8_t*>val)[vlen] = c
                    vlen += 1
                    j += 1
                if j >= n:
                    _fail(r, R_UNTERMINATED, lineno, s, n, a, key, keylen, NULL, 0, 0, 0, 0)
                    return 0
                r.scratch.n += vlen
            i = j + 1
            kind = RK_STR
            v = 0
        else:
            j = i
            while j < n and s[j] != 44 and s[j] != 32:
                j += 1
            val = s + i
            vlen = j - i
            if vlen == 0:
                _fail(r, R_MISSING_VALUE, lineno, s, n, i, key, keylen, NULL, 0, 0, 0, 0)
                return 0
            kind = RK_BOOL
            c = val[0]
            if (c == 116 or c == 84) and (_word(val, vlen, "t") or _word(val, vlen, "T") or _word(val, vlen, "true")
                                          or _word(val, vlen, "True") or _word(val, vlen, "TRUE")):
                v = 1
            elif (c == 102 or c == 70) and (_word(val, vlen, "f") or _word(val, vlen, "F")
                                            or _word(val, vlen, "false") or _word(val, vlen, "False")
                                            or _word(val, vlen, "FALSE")):
                v = 0
            elif val[vlen - 1] == 105 or val[vlen - 1] == 117:  # 12i, 12u
                kind = RK_INT
                res = _parse_int(val, vlen - 1, val[vlen - 1] == 105, 0x7FFFFFFFFFFFFFFFULL,
                                 0x8000000000000000ULL, &v)
                if res == 0:
                    _fail(r, R_BAD_VALUE, lineno, s, n, i, key, keylen, val, vlen, 0, 0, 0)
                    return 0
                if res < 0:
                    _fail(r, R_INT_RANGE, lineno, s, n, i, key, keylen, val, vlen, 0, 0, 0)
                    return 0
            elif _float_text(val, vlen):
                kind = RK_FLOAT
                numbuf = num
                if vlen >= 72:
                    numbuf = <char*>(r.scratch.p + r.scratch.n)
                memcpy(numbuf, val, vlen)
                numbuf[vlen] = 0
                dv = strtod(numbuf, NULL)
                if not isfinite(dv):
                    _fail(r, R_FLOAT_RANGE, lineno, s, n, i, key, keylen, val, vlen, 0, 0, 0)
                    return 0
                memcpy(&v, &dv, 8)
            else:
                _fail(r, R_BAD_VALUE, lineno, s, n, i, key, keylen, val, vlen, 0, 0, 0)
                return 0
            i = j
        if _add_value(r, key, keylen, nkeys, kind, v, val, vlen, kstart, lineno, s, n, high) <= 0:
            return 0 if not r.nomem else -1
        nkeys += 1
        if i < n and s[i] == 44:
            i += 1
            continue
        break
    # timestamp
    if i < n:
        if s[i] != 32:
            _fail(r, R_AFTER_VALUE, lineno, s, n, i, key, keylen, NULL, 0, s[i], 0, 0)
            return 0
        a = i
        while a < n and (s[a] == 32 or s[a] == 9):
            a += 1
        j = n
        while j > a and (s[j - 1] == 32 or s[j - 1] == 9):
            j -= 1
        if j > a:
            res = _parse_int(s + a, j - a, True, 0x7FFFFFFFFFFFFFFFULL, 0x8000000000000000ULL, &ts)
            if res == 0:
                _fail(r, R_TIMESTAMP, lineno, s, n, i + 1, NULL, 0, s + a, j - a, 0, 0, 0)
                return 0
            if res < 0:
                _fail(r, R_TIMESTAMP_RANGE, lineno, s, n, i + 1, NULL, 0, s + a, j - a, 0, 0, 0)
                return 0
    return _commit(r, lineno, s, n, nkeys, ts)


cdef int _add_value(Reader* r, const uint8_t* key, int64_t keylen, int position, int kind, int64_t iv,
                    const uint8_t* val, int64_t vlen, int64_t pos, int64_t lineno,
                    const uint8_t* line, int64_t linelen, bint high) noexcept nogil:
    """Note a value of the line; 1, or 0 after a _fail (r.nomem: out of memory)."""
    cdef int col
    cdef RVal* rv
    cdef RVal* grown
    if high:
        _text(r, &key, &keylen)
    col = _key_column(r, key, keylen, position)
    if col == -2:
        r.nomem = 1
        return 0
    if col == -1:
        _fail(r, R_TOO_MANY_KEYS, lineno, line, linelen, pos, NULL, 0, NULL, 0, 0, 0, 0)
        return 0
    if r.cols[col].line_seen == lineno:
        _fail(r, R_DUPLICATE, lineno, line, linelen, pos, key, keylen, NULL, 0, 0, 0, 0)
        return 0
    r.cols[col].line_seen = lineno
    if r.nvals == r.capvals:
        grown = <RVal*>realloc(r.vals, (2 * r.capvals + 16) * sizeof(RVal))
        if grown == NULL:
            r.nomem = 1
            return 0
        r.vals = grown
        r.capvals = 2 * r.capvals + 16
    rv = &r.vals[r.nvals]
    r.nvals += 1
    rv.col = col
    rv.kind = kind
    rv.iv = iv
    rv.s = val
    rv.slen = vlen
    rv.pos = pos
    if kind == RK_STR and high:
        _text(r, &rv.s, &rv.slen)
    return 1


cdef int _commit(Reader* r, int64_t lineno, const uint8_t* line, int64_t linelen, int nkeys,
                 int64_t ts) noexcept nogil:
    cdef int k, want
    cdef RVal* rv
    cdef RCol* col
    cdef int64_t row = r.rows, q
    cdef int* grown
    for k in range(r.nvals):
        rv = &r.vals[k]
        col = &r.cols[rv.col]
        want = col.required if col.required else col.kind
        if want and want != rv.kind:
            _fail(r, R_REQUIRED_TYPE if col.required else R_TYPE, lineno, line, linelen, rv.pos,
                  r.keys.p + col.key_off, col.keylen, NULL, 0, 0, rv.kind, want)
            return 0
    for k in range(r.nrequired):
        col = &r.cols[r.required[k]]
        if col.line_seen != lineno:
            _fail(r, R_REQUIRED_MISSING, lineno, line, linelen, 0, r.keys.p + col.key_off, col.keylen,
                  NULL, 0, 0, 0, col.required)
            return 0
    for k in range(r.nvals):
        rv = &r.vals[k]
        col = &r.cols[rv.col]
        if col.valid == NULL and _type_column(r, col, rv.kind) < 0:
            return -1
        col.valid[row] = 1
        if rv.kind == RK_STR:
            if bytebuf_reserve(&col.data, rv.slen) < 0:
                return -1
            q = col.data.n
            while col.filled <= row:  # rows without this key: empty
                col.offs[col.filled] = <int32_t>q
                col.filled += 1
            memcpy(col.data.p + q, rv.s, rv.slen)
            col.data.n += rv.slen
            col.offs[row + 1] = <int32_t>col.data.n
            col.filled = row + 1
        else:
            col.vals[row] = rv.iv
    r.times[row] = ts
    r.rows += 1
    if r.nvals > r.npred:
        grown = <int*>realloc(r.pred, r.nvals * sizeof(int))
        if grown == NULL:
            return -1
        r.pred = grown
    for k in range(r.nvals):
        r.pred[k] = r.vals[k].col
    r.npred = r.nvals
    return 1


cdef void _read_body(Reader* r) noexcept nogil:
    cdef int64_t i = 0, e, a, lineno = 0
    cdef const uint8_t* nl
    cdef int rc
    while i <= r.n and not r.nomem:
        nl = <const uint8_t*>memchr(r.body + i, 10, r.n - i) if i < r.n else NULL
        e = (nl - r.body) if nl != NULL else r.n
        lineno += 1
        a = i
        while a < e and (r.body[a] == 32 or r.body[a] == 9):
            a += 1
        if a < e and r.body[a] != 35:  # not blank, not a comment
            rc = _line(r, r.body + i, e - i, lineno)
            if rc < 0:
                r.nomem = 1
        if nl == NULL:
            break
        i = e + 1


cdef str _error_text(RErr* e, body):
    line = bytes(body[e.line_off:e.line_off + e.line_len]).decode("utf-8", "replace")
    key = e.key[:e.key_len].decode("utf-8", "replace")
    tok = e.tok[:e.tok_len].decode("utf-8", "replace")
    msg = _READ_ERRORS[e.code].format(key=key, tok=tok, ch=chr(e.ch), kind=_KIND_TEXT[e.kind],
                                      want=_KIND_TEXT[e.want], max_keys=MAX_KEYS, max_line=MAX_LINE)
    snippet = line if len(line) <= 200 else line[:200] + "..."
    return f"line {e.lineno}, column {e.col + 1}: {msg}: {snippet!r}"


def read_points(body, required=None, int64_t timestamp_ns=0):
    """The points of a line-protocol body as columns (see the comment above).

    :param body: bytes-like (read in place).
    :param required: {key: "string" | "int" | "float" | "bool"}: lines
        without those keys, or with values of another type, are rejected.
    :param timestamp_ns: ``time`` of points without a timestamp.
    :returns: ``(table, rejected, errors)``: a pyarrow Table of the
        accepted points (a column per key, tags as strings, and ``time``,
        int64 ns), the count of rejected lines, and the messages of the
        first few of them.
    """
    import numpy as np

    cdef const uint8_t[::1] view = memoryview(body).cast("B") if len(body) else memoryview(b"\n").cast("B")
    cdef Reader* r = <Reader*>calloc(1, sizeof(Reader))
    cdef int64_t k, nlines = 0
    cdef int c
    cdef RCol* col
    cdef const uint8_t* nl
    cdef bytes key
    if r == NULL:
        raise MemoryError()
    r.body = &view[0]
    r.n = len(body)
    if r.n > 0x7FFFFFFF // 3:
        free(r)
        raise ValueError(f"line-protocol body of {r.n} bytes: at most {0x7FFFFFFF // 3} are read at once")
    r.ts_default = timestamp_ns
    try:
        with nogil:
            nl = r.body
            while True:
                nl = <const uint8_t*>memchr(nl, 10, r.body + r.n - nl)
                nlines += 1
                if nl == NULL:
                    break
                nl += 1
        r.max_rows = nlines
        r.times = <int64_t*>malloc((nlines + 1) * sizeof(int64_t))
        r.cols = <RCol*>calloc(MAX_KEYS, sizeof(RCol))
        if r.times == NULL or r.cols == NULL:
            raise MemoryError()
        for name, kind in dict(required or {}).items():
            if kind not in READ_KINDS:
                raise ValueError(f"read_points: required kind {kind!r} of {name!r} is not one of {sorted(READ_KINDS)}")
            key = name.encode()
            c = _key_column(r, <const uint8_t*><const char*>key, len(key), 1 << 30)
            if c < 0:
                raise MemoryError()
            if r.cols[c].required == 0:
                if r.nrequired == 16:
                    raise ValueError("read_points: at most 16 required keys")
                r.required[r.nrequired] = c
                r.nrequired += 1
            r.cols[c].required = READ_KINDS[kind]
        with nogil:
            _read_body(r)
        if r.nomem:
            raise MemoryError("line-protocol reader: out of memory")
        n = r.rows
        names, arrays = [], []
        for c in range(r.ncols):
            col = &r.cols[c]
            if col.valid == NULL:
                continue  # only rejected lines had it
            valid = np.frombuffer((<char*>col.valid)[:n], np.uint8).astype(bool) if n else np.zeros(0, bool)
            mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
            if col.kind == RK_STR:
                while col.filled <= n:
                    col.offs[col.filled] = <int32_t>col.data.n
                    col.filled += 1
                offs = pa.py_buffer((<char*>col.offs)[:4 * (n + 1)])
                data = pa.py_buffer((<char*>col.data.p)[:col.data.n] if col.data.n else b"")
                arr = pa.Array.from_buffers(pa.string(), n, [mask, offs, data])
            elif col.kind == RK_BOOL:
                bits = np.packbits(np.frombuffer((<char*>col.vals)[:8 * n], np.int64) != 0, bitorder="little")
                arr = pa.Array.from_buffers(pa.bool_(), n, [mask, pa.py_buffer(bits)])
            else:
                arr = pa.Array.from_buffers(pa.int64() if col.kind == RK_INT else pa.float64(), n,
                                            [mask, pa.py_buffer((<char*>col.vals)[:8 * n])])
            names.append((<char*>r.keys.p)[col.key_off:col.key_off + col.keylen].decode())
            arrays.append(arr)
        names.append("time")
        arrays.append(pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer((<char*>r.times)[:8 * n])]))
        if "time" in names[:-1]:  # a key named time: the point's timestamp wins the name
            k = names.index("time")
            del names[k]
            del arrays[k]
        errors = [_error_text(&r.errors[k], view) for k in range(r.nerrors)]
        return pa.Table.from_arrays(arrays, names), r.rejected, errors
    finally:
        for c in range(r.ncols):
            free(r.cols[c].valid)
            free(r.cols[c].vals)
            free(r.cols[c].offs)
            free(r.cols[c].data.p)
        free(r.cols)
        free(r.times)
        free(r.pred)
        free(r.vals)
        free(r.keys.p)
        free(r.scratch.p)
        free(r)

"""HPACK (RFC 7541) header block decoding for HTTP/2 spans: one decoder per
connection and direction, since each end keeps its own dynamic table.

Two ways out of one decoding loop (``_decode_block``):

* ``decode_headers(payloads, rows, which, decoders)``, the span builder's:
  the header blocks of the HTTP/2 frame rows of ``dkebpf._http2.parse``
  (HEADERS / PUSH_PROMISE and their CONTINUATIONs put together), each on
  the decoder of its connection and direction, with the GIL released and
  no Python object per block or header. What a span needs lands in one
  record per frame row (``HEADERS_DTYPE``): ``:method``, ``:path``,
  ``:authority``, ``content-type``, ``grpc-message`` (offset and length in
  the returned byte arena), ``:status`` and ``grpc-status`` as numbers, and
  the app trace context of the trace-context headers ext/tracectx.pyx knows
  (``traceparent``, B3, Datadog: the same rules, through its C interface,
  ext/includes/dkebpf/_tracectx.pxd). The first occurrence of a header
  wins.
* ``HpackDecoder.decode(block)``: every header of one block, as one bytes
  object and an offsets array (names and values alternating), for tests
  and tools.

Representations: indexed (static table 1..61, dynamic 62..), literal with
incremental indexing, without indexing, never indexed, and dynamic table
size updates (up to ``max_table_size``, the largest the decoder accepts).
The dynamic table is C memory (a ring of entries, each remembering which
span field its name is, so an indexed header costs no name comparison).
Huffman strings (Appendix B) are decoded by a table of the next 12 bits
(up to two symbols a step), else four bits at a time by a state machine
built at import from the code table (ext/includes/hpack_tables.h). A
literal header name Huffman-coded as one of the names spans read or gRPC
peers send anew on every call (grpc-timeout, traceparent) is known by its
coding, without decoding it (a string has one coding: its padding is
fixed).

A decoding error (ValueError naming it from ``decode``; an error code in
the record from ``decode_headers``) leaves the connection's table unknown:
the decoder is then broken and refuses later blocks (``E_BROKEN``), so a
connection seen mid-stream, whose indexed headers refer to entries it never
saw, stops at its first such block instead of reporting wrong headers. A
header block cut by the capture, or a CONTINUATION without its HEADERS,
breaks it the same way.

``tests/reference/hpack_ref.py`` holds the same rules in plain Python.
"""
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, strlen

import numpy as np
cimport numpy as cnp

from payloads cimport payload_view, view_payloads, payload_start
from dk_common cimport offset_of
from bytebuf cimport bytebuf, bytebuf_reserve
from dkebpf._tracectx cimport ctx_t, CTX_HEADERS, ctx_header, ctx_from_values

cnp.import_array()

__all__ = ["HpackDecoder", "decode_headers", "HEADERS_DTYPE", "ERRORS", "strings"]

cdef extern from *:
    uint64_t __builtin_bswap64(uint64_t) nogil

cdef extern from "hpack_tables.h":
    const uint32_t HPACK_HUFFMAN_CODE[257]
    const uint8_t HPACK_HUFFMAN_BITS[257]
    const char *const HPACK_STATIC_NAME[62]
    const char *const HPACK_STATIC_VALUE[62]

# ------------------------------------------------------------------ errors

cdef enum:
    E_INDEX = 1
    E_INT_CUT
    E_INT_BIG
    E_STR_MISSING
    E_STR_CUT
    E_HUFF_CODE
    E_HUFF_EOS
    E_HUFF_PAD
    E_SIZE
    E_NOMEM
    E_CUT_FRAME
    E_CONTINUATION
    E_BROKEN
    E_UNKNOWN = 100  # (not an error) an entry added before a partial table started

ERRORS = ("", "index not in the tables", "integer cut", "integer too large", "string missing",
          "string longer than the block", "bad Huffman code", "EOS inside a Huffman string",
          "bad Huffman padding", "table size update above the limit", "out of memory",
          "header block cut by the capture", "CONTINUATION without the HEADERS it continues",
          "an earlier block of this connection failed: its table is unknown")

# ------------------------------------------------------------ span fields

cdef enum:  # which span field a header name is; F_CTX + h: tracectx's header h
    F_METHOD = 0
    F_PATH
    F_AUTHORITY
    F_CTYPE
    F_GRPC_MESSAGE
    F_STATUS
    F_GRPC_STATUS
    F_CTX
    F_UNKNOWN = 254  # a partial table's entry whose name it did not see
    F_NONE = 255
cdef enum:
    N_STR_FIELDS = 5  # F_METHOD..F_GRPC_MESSAGE: strings in the arena
    CTX_CAP = 256     # tracectx reads at most this much of a value

STRING_FIELDS = ("method", "path", "authority", "content_type", "grpc_message")

# hdr_t: declared in ext/includes/dkebpf/_hpack.pxd


cdef hdr_t _h
HEADERS_DTYPE = np.dtype({
    "names": ["trace_hi", "trace_lo", "parent", "str_off", "str_len", "status", "grpc_status", "sampled",
              "source", "state", "error", "nheaders"],
    "formats": ["<u8", "<u8", "<u8", ("<u4", 5), ("<u4", 5), "<u2", "<i2", "i1", "u1", "u1", "u1", "<u2"],
    "offsets": [offset_of(&_h, &_h.trace_hi), offset_of(&_h, &_h.trace_lo), offset_of(&_h, &_h.parent),
                offset_of(&_h, &_h.str_off), offset_of(&_h, &_h.str_len), offset_of(&_h, &_h.status),
                offset_of(&_h, &_h.grpc_status), offset_of(&_h, &_h.sampled), offset_of(&_h, &_h.source),
                offset_of(&_h, &_h.state), offset_of(&_h, &_h.error), offset_of(&_h, &_h.nheaders)],
    "itemsize": sizeof(hdr_t)})


cdef uint8_t _field_of(const uint8_t *p, int n) noexcept nogil:
    cdef int h
    if n == 7 and memcmp(p, b":method", 7) == 0:
        return F_METHOD
    if n == 5 and memcmp(p, b":path", 5) == 0:
        return F_PATH
    if n == 10 and memcmp(p, b":authority", 10) == 0:
        return F_AUTHORITY
    if n == 12 and memcmp(p, b"content-type", 12) == 0:
        return F_CTYPE
    if n == 12 and memcmp(p, b"grpc-message", 12) == 0:
        return F_GRPC_MESSAGE
    if n == 7 and memcmp(p, b":status", 7) == 0:
        return F_STATUS
    if n == 11 and memcmp(p, b"grpc-status", 11) == 0:
        return F_GRPC_STATUS
    h = ctx_header(p, n)
    return F_NONE if h < 0 else <uint8_t>(F_CTX + h)


cdef uint8_t STATIC_FIELD[62]
cdef int STATIC_NLEN[62]
cdef int STATIC_VLEN[62]


def _init_static():
    for i in range(1, 62):
        STATIC_NLEN[i] = strlen(HPACK_STATIC_NAME[i])
        STATIC_VLEN[i] = strlen(HPACK_STATIC_VALUE[i])
        STATIC_FIELD[i] = _field_of(<const uint8_t *>HPACK_STATIC_NAME[i], STATIC_NLEN[i])


_init_static()

# ----------------------------------------------------------------- Huffman

# state machine: state = an inner node of the code tree (0 the root);
# HUFF_NEXT/HUFF_SYM[state * 16 + nibble]: the node after those four bits,
# and the symbol completed on the way (-1 none, 256 EOS, -2 no such code)
cdef uint8_t HUFF_NEXT[256 * 16]
cdef int16_t HUFF_SYM[256 * 16]
cdef uint8_t HUFF_PAD_OK[256]  # padding may end here: the root, or up to 7 one bits below it


def _init_huffman():
    children = [[-1, -1]]  # inner nodes; a child >= 0 an inner node, <= -2 the leaf of symbol -2 - child
    for s in range(257):
        code, bits, node = HPACK_HUFFMAN_CODE[s], HPACK_HUFFMAN_BITS[s], 0
        for k in range(bits - 1, -1, -1):
            b = (code >> k) & 1
            if k == 0:
                if children[node][b] != -1:
                    raise ImportError("hpack_tables.h: the Huffman code is not a prefix code")
                children[node][b] = -2 - s
            else:
                if children[node][b] == -1:
                    children.append([-1, -1])
                    children[node][b] = len(children) - 1
                node = children[node][b]
                if node < 0:
                    raise ImportError("hpack_tables.h: the Huffman code is not a prefix code")
    if len(children) > 256:
        raise ImportError(f"hpack_tables.h: {len(children)} inner nodes, the state machine holds 256")
    for state in range(len(children)):
        HUFF_PAD_OK[state] = 0
        for nib in range(16):
            node, sym = state, -1
            for k in (3, 2, 1, 0):
                c = children[node][(nib >> k) & 1]
                if c == -1:
                    sym, node = -2, 0
                    break
                if c <= -2:
                    sym, node = -2 - c, 0
                    if sym == 256:
                        break
                else:
                    node = c
            HUFF_NEXT[state * 16 + nib] = node
            HUFF_SYM[state * 16 + nib] = sym
    node = 0
    for depth in range(8):  # the all-ones path: EOS's first bits
        HUFF_PAD_OK[node] = 1
        node = children[node][1]


_init_huffman()

# fast path: HUFF_FAST[the next HUFF_FAST_BITS bits] = the one or two
# symbols whose whole codes lie in them, packed (one load a step): byte 0
# the first symbol, 1 the second, 2 how many (n, 0..2) << 4 | the first's
# bits, 3 the bits of all n (n 0: the first code is longer, the state
# machine decodes the string); valid strings give the same bytes
DEF HUFF_FAST_BITS = 12
cdef uint32_t HUFF_FAST[1 << HUFF_FAST_BITS]


def _init_huffman_fast():
    codes = {}  # (bit length, code) -> symbol, codes of at most HUFF_FAST_BITS bits
    for s in range(256):
        if HPACK_HUFFMAN_BITS[s] <= HUFF_FAST_BITS:
            codes[(HPACK_HUFFMAN_BITS[s], HPACK_HUFFMAN_CODE[s])] = s

    def first(v, width):  # the code the `width`-bit value v starts with: (symbol, bits) or None
        for bits in range(5, width + 1):
            s = codes.get((bits, v >> (width - bits)))
            if s is not None:
                return s, bits
        return None

    for v in range(1 << HUFF_FAST_BITS):
        HUFF_FAST[v] = 0
        a = first(v, HUFF_FAST_BITS)
        if a is None:
            continue
        rest = HUFF_FAST_BITS - a[1]
        b = first(v & ((1 << rest) - 1), rest) if rest >= 5 else None
        if b is None:
            HUFF_FAST[v] = a[0] | (1 << 4 | a[1]) << 16 | a[1] << 24
        else:
            HUFF_FAST[v] = a[0] | b[0] << 8 | (2 << 4 | a[1]) << 16 | (a[1] + b[1]) << 24


_init_huffman_fast()


# names known Huffman-coded: a literal header name of a block is compared as
# it is coded (a string has one Huffman coding: the padding is fixed) with
# the codings of the names a span reads and of common ones, and needs no
# decoding nor _field_of when it is one of them (gRPC peers send
# grpc-timeout and traceparent as new literal names on every call)
DEF KNOWN_MAX = 96
DEF KNOWN_LEN = 40   # longest coding (and plain name) kept

cdef struct known_t:
    uint8_t enc[KNOWN_LEN]
    uint8_t plain[KNOWN_LEN]
    int plen
    uint8_t field

cdef known_t KNOWN[KNOWN_MAX]
cdef int KNOWN_FIRST[KNOWN_LEN + 2]  # KNOWN[KNOWN_FIRST[l]:KNOWN_FIRST[l + 1]]: codings l bytes long


def _huffman_encode(bytes name):
    cdef int c
    acc = nb = 0
    for c in name:
        acc = acc << HPACK_HUFFMAN_BITS[c] | HPACK_HUFFMAN_CODE[c]
        nb += HPACK_HUFFMAN_BITS[c]
    pad = -nb % 8
    return (acc << pad | (1 << pad) - 1).to_bytes((nb + pad) // 8, "big")


def _init_known():
    from dkebpf._tracectx import HEADER_NAMES
    names = [HPACK_STATIC_NAME[i] for i in range(1, 62)] + list(HEADER_NAMES) + [
        b"grpc-message", b"grpc-status", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"te"]
    codings = sorted({(_huffman_encode(nm), nm) for nm in names if len(nm) < KNOWN_LEN})
    codings = sorted((c for c in codings if len(c[0]) <= KNOWN_LEN), key=lambda c: len(c[0]))[:KNOWN_MAX]
    for e, (enc, nm) in enumerate(codings):
        for k in range(len(enc)):
            KNOWN[e].enc[k] = enc[k]
        for k in range(len(nm)):
            KNOWN[e].plain[k] = nm[k]
        KNOWN[e].plen = len(nm)
        KNOWN[e].field = _field_of(<const uint8_t *><const char *>nm, len(nm))
    for length in range(KNOWN_LEN + 2):
        KNOWN_FIRST[length] = sum(1 for c in codings if len(c[0]) < length)


_init_known()


cdef int64_t _name(hstate_t *s, const uint8_t *b, int64_t i, int64_t n, const uint8_t **name, int *nlen,
                   uint8_t *field) noexcept nogil:
    """The literal name at b[i] -> name (and its field); the index after
    it, or -E_* (as _string)."""
    cdef int64_t length, j
    cdef int e
    if i < n and b[i] & 0x80:
        j = _int(b, i, n, 7, &length)
        if j >= 0 and length <= n - j and length <= KNOWN_LEN:
            for e in range(KNOWN_FIRST[length], KNOWN_FIRST[length + 1]):
                if KNOWN[e].enc[0] == b[j] and memcmp(KNOWN[e].enc, b + j, length) == 0:
                    name[0] = KNOWN[e].plain
                    nlen[0] = KNOWN[e].plen
                    field[0] = KNOWN[e].field
                    return j + length
    i = _string(s, b, i, n, &s.hname, name, nlen)
    if i >= 0:
        field[0] = _field_of(name[0], nlen[0])
    return i


# ------------------------------------------------------------------- state

# entry_t, hstate_t: declared in ext/includes/dkebpf/_hpack.pxd


cdef void _evict(hstate_t *s) noexcept nogil:
    cdef int oldest = s.head - s.count + 1  # (ring positions wrap by a compare, not a division)
    if oldest < 0:
        oldest += s.cap
    s.size -= s.ring[oldest].nlen + s.ring[oldest].vlen + 32
    free(s.ring[oldest].blob)
    s.count -= 1


cdef int _grow(hstate_t *s) noexcept nogil:
    """A larger ring (the oldest entry first): allocated as entries come, as
    a table of the initial 4096 bytes holds ~100 of them and most never
    grow, while the largest size accepted needs limit / 32 + 1 slots."""
    cdef int cap = s.cap * 2 if s.cap else 16, i
    cdef int top = <int>(s.limit // 32 + 1)
    cdef entry_t *ring
    if cap > top:
        cap = top
    ring = <entry_t *>malloc(cap * sizeof(entry_t))
    if ring == NULL:
        return E_NOMEM
    for i in range(s.count):
        ring[i] = s.ring[(s.head - s.count + 1 + i + s.cap) % s.cap]
    free(s.ring)
    s.ring = ring
    s.cap = cap
    s.head = s.count - 1
    return 0


cdef int _add(hstate_t *s, const uint8_t *name, int nlen, const uint8_t *value, int vlen, uint8_t field) noexcept nogil:
    cdef int64_t need = <int64_t>nlen + vlen + 32
    cdef uint8_t *blob = NULL
    if need <= s.max_size:
        # copied before evicting: the name may be an entry's that goes (4.4)
        blob = <uint8_t *>malloc(nlen + vlen + 1)
        if blob == NULL:
            return E_NOMEM
        memcpy(blob, name, nlen)
        memcpy(blob + nlen, value, vlen)
    while s.count and s.size + need > s.max_size:
        _evict(s)
    if blob == NULL:
        return 0  # larger than the table: it empties it and is not added (4.4)
    if s.count == s.cap and _grow(s):
        free(blob)
        return E_NOMEM
    s.head += 1
    if s.head == s.cap:
        s.head = 0
    s.ring[s.head].blob = blob
    s.ring[s.head].nlen = nlen
    s.ring[s.head].vlen = vlen
    s.ring[s.head].field = field
    s.count += 1
    s.size += need
    return 0


cdef int _lookup(hstate_t *s, int64_t index, const uint8_t **name, int *nlen, const uint8_t **value, int *vlen,
                 uint8_t *field) noexcept nogil:
    cdef int slot
    if 1 <= index <= 61:
        name[0] = <const uint8_t *>HPACK_STATIC_NAME[index]
        nlen[0] = STATIC_NLEN[index]
        value[0] = <const uint8_t *>HPACK_STATIC_VALUE[index]
        vlen[0] = STATIC_VLEN[index]
        field[0] = STATIC_FIELD[index]
        return 0
    if index >= 62 and index - 62 >= s.count and s.partial:
        return E_UNKNOWN
    if index < 1 or index - 62 >= s.count:
        s.err_a = index
        s.err_b = s.count
        return E_INDEX
    slot = s.head - <int>(index - 62)  # index - 62 < count <= cap
    if slot < 0:
        slot += s.cap
    name[0] = s.ring[slot].blob
    nlen[0] = s.ring[slot].nlen
    value[0] = s.ring[slot].blob + s.ring[slot].nlen
    vlen[0] = s.ring[slot].vlen
    field[0] = s.ring[slot].field
    return 0


cdef int64_t _int(const uint8_t *b, int64_t i, int64_t n, int prefix, int64_t *out) noexcept nogil:
    """The integer with an N-bit prefix at b[i] (5.1) -> out; the index after
    it, or -E_* on an error."""
    cdef int64_t mask = (1 << prefix) - 1, v = b[i] & mask
    cdef int shift = 0
    i += 1
    if v == mask:
        while True:
            if i >= n:
                return -E_INT_CUT
            if shift > 28:
                return -E_INT_BIG
            v += <int64_t>(b[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not (b[i - 1] & 0x80):
                break
    out[0] = v
    return i


cdef inline int _huff_nibble(int state, uint8_t nibble, uint8_t *out, int64_t *k) noexcept nogil:
    """One step of the Huffman state machine: the next state, the symbol
    it completes (if any) appended at out[k]; -E_* on EOS or no code."""
    cdef int t = state * 16 + nibble
    cdef int16_t sym = HUFF_SYM[t]
    if sym >= 0:
        if sym == 256:
            return -E_HUFF_EOS
        out[k[0]] = <uint8_t>sym
        k[0] += 1
    elif sym == -2:
        return -E_HUFF_CODE
    return HUFF_NEXT[t]


cdef inline uint64_t _load_be64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return __builtin_bswap64(v)


cdef int64_t _huff_fast(const uint8_t *b, int64_t n, uint8_t *out) noexcept nogil:
    """The Huffman string b[0:n] -> out (room for n * 8 // 5 + 2 bytes) by
    HUFF_FAST, up to two symbols a step; its length, or -1 where it meets
    a code longer than HUFF_FAST_BITS or an error (the state machine then
    decodes it, and names the error)."""
    cdef uint64_t acc = 0   # the next bits, from the top
    cdef int nb = 0         # how many
    cdef int64_t i = 0, k = 0
    cdef uint32_t t
    cdef int bits
    while True:
        if nb < HUFF_FAST_BITS:  # refilled only when a step may lack bits (it takes at most HUFF_FAST_BITS)
            if i + 8 <= n:  # eight bytes at once, big-endian, as many as fit
                acc |= _load_be64(b + i) >> nb
                i += (63 - nb) >> 3
                nb |= 56
            while nb <= 56 and i < n:
                acc |= <uint64_t>b[i] << (56 - nb)
                nb += 8
                i += 1
            if nb == 0:
                return k
        t = HUFF_FAST[acc >> (64 - HUFF_FAST_BITS)]
        bits = t >> 24
        if t and bits <= nb:
            out[k] = <uint8_t>t
            out[k + 1] = <uint8_t>(t >> 8)
            k += (t >> 20) & 3
            acc <<= bits
            nb -= bits
        elif t and <int>((t >> 16) & 15) <= nb:
            out[k] = <uint8_t>t
            k += 1
            acc <<= (t >> 16) & 15
            nb -= (t >> 16) & 15
        elif nb <= 7 and acc >> (64 - nb) == (<uint64_t>1 << nb) - 1:
            return k    # the padding: fewer than 8 bits, all ones (EOS's first)
        else:
            return -1


cdef int64_t _string(hstate_t *s, const uint8_t *b, int64_t i, int64_t n, bytebuf *tmp,
                     const uint8_t **out, int *outlen) noexcept nogil:
    """The string literal at b[i] (5.2) -> out (into b, or tmp when Huffman
    coded); the index after it, or -E_*."""
    cdef bint huff
    cdef int64_t length, k, e
    cdef int state = 0
    if i >= n:
        return -E_STR_MISSING
    huff = b[i] & 0x80
    i = _int(b, i, n, 7, &length)
    if i < 0:
        return i
    if length > n - i:
        s.err_a = length
        s.err_b = n - i
        return -E_STR_CUT
    if not huff:
        out[0] = b + i
        outlen[0] = <int>length
        return i + length
    tmp.n = 0
    if bytebuf_reserve(tmp, length * 8 // 5 + 2) < 0:
        return -E_NOMEM
    e = i + length
    k = _huff_fast(b + i, length, tmp.p)
    if k >= 0:
        out[0] = tmp.p
        outlen[0] = <int>k
        return e
    k = 0
    while i < e:
        state = _huff_nibble(state, b[i] >> 4, tmp.p, &k)
        if state >= 0:
            state = _huff_nibble(state, b[i] & 15, tmp.p, &k)
        if state < 0:
            return state
        i += 1
    if not HUFF_PAD_OK[state]:  # padding: fewer than 8 bits, all ones
        return -E_HUFF_PAD
    out[0] = tmp.p
    outlen[0] = <int>k
    return e


# ------------------------------------------------------ where headers go

cdef struct sink_t:
    bint every            # every header into all/offs (decode), else the fields into rec
    bytebuf all
    bytebuf offs            # int32 offsets
    hdr_t *rec
    uint32_t seen         # bit f: field f met in this block (the first one wins)
    bytebuf *arena
    uint8_t ctx_val[CTX_HEADERS * CTX_CAP]
    int ctx_len[CTX_HEADERS]


cdef int _emit(sink_t *k, uint8_t field, const uint8_t *name, int nlen, const uint8_t *value, int vlen) noexcept nogil:
    cdef hdr_t *r
    cdef int h, v, d
    if k.every:
        if bytebuf_reserve(&k.all, nlen + vlen) < 0 or bytebuf_reserve(&k.offs, 8) < 0:
            return E_NOMEM
        memcpy(k.all.p + k.all.n, name, nlen)
        k.all.n += nlen
        (<int32_t *>(k.offs.p + k.offs.n))[0] = <int32_t>k.all.n
        memcpy(k.all.p + k.all.n, value, vlen)
        k.all.n += vlen
        (<int32_t *>(k.offs.p + k.offs.n))[1] = <int32_t>k.all.n
        k.offs.n += 8
        return 0
    r = k.rec
    if r.nheaders < 0xFFFF:
        r.nheaders += 1
    if field >= F_UNKNOWN or k.seen & (1u << field):
        return 0
    k.seen |= 1u << field
    if field < N_STR_FIELDS:
        if bytebuf_reserve(k.arena, vlen) < 0:
            return E_NOMEM
        r.str_off[field] = <uint32_t>k.arena.n
        r.str_len[field] = <uint32_t>vlen
        memcpy(k.arena.p + k.arena.n, value, vlen)
        k.arena.n += vlen
    elif field == F_STATUS:
        if vlen == 3 and 48 <= value[0] <= 57 and 48 <= value[1] <= 57 and 48 <= value[2] <= 57:
            r.status = (value[0] - 48) * 100 + (value[1] - 48) * 10 + value[2] - 48
    elif field == F_GRPC_STATUS:
        if 1 <= vlen <= 4:
            v = 0
            for d in range(vlen):
                if not 48 <= value[d] <= 57:
                    return 0
                v = v * 10 + value[d] - 48
            r.grpc_status = <int16_t>v
    else:
        h = field - F_CTX
        k.ctx_len[h] = vlen if vlen < CTX_CAP else CTX_CAP
        memcpy(k.ctx_val + h * CTX_CAP, value, k.ctx_len[h])
    return 0


cdef void _rec_start(sink_t *k) noexcept nogil:
    cdef hdr_t *r = k.rec
    cdef int f
    r.trace_hi = r.trace_lo = r.parent = 0
    for f in range(N_STR_FIELDS):
        r.str_off[f] = 0
        r.str_len[f] = 0xFFFFFFFF
    r.status = 0
    r.grpc_status = -1
    r.sampled = 0
    r.source = 0
    r.state = 0
    r.error = 0
    r.nheaders = 0
    k.seen = 0
    for f in range(CTX_HEADERS):
        k.ctx_len[f] = -1


cdef void _rec_end(sink_t *k) noexcept nogil:
    cdef const uint8_t *val[CTX_HEADERS]
    cdef ctx_t c
    cdef int h
    for h in range(CTX_HEADERS):
        val[h] = k.ctx_val + h * CTX_CAP
    ctx_from_values(val, k.ctx_len, &c)
    k.rec.trace_hi = c.hi
    k.rec.trace_lo = c.lo
    k.rec.parent = c.parent
    k.rec.sampled = c.sampled
    k.rec.source = c.source


# ------------------------------------------------------------ the decoder

cdef int _decode_block(hstate_t *s, const uint8_t *b, int64_t n, sink_t *k) noexcept nogil:
    """One header block on the table of s -> the headers into k; 0 or E_*
    (then s is broken)."""
    cdef int64_t i = 0, index
    cdef uint8_t c, field
    cdef const uint8_t *name
    cdef const uint8_t *value
    cdef int nlen, vlen, err = 0
    cdef bint incremental
    if s.error:
        return E_BROKEN
    while i < n:
        c = b[i]
        if c & 0x80:  # indexed
            i = _int(b, i, n, 7, &index)
            if i < 0:
                err = <int>-i
                break
            err = _lookup(s, index, &name, &nlen, &value, &vlen, &field)
            if err == E_UNKNOWN:  # a header that cannot be known: counted only
                err = _emit(k, F_UNKNOWN, NULL, 0, NULL, 0)
            elif not err:
                err = _emit(k, field, name, nlen, value, vlen)
            if err:
                break
        elif (c & 0xE0) == 0x20:  # size update
            i = _int(b, i, n, 5, &index)
            if i < 0:
                err = <int>-i
                break
            if index > s.limit:
                s.err_a = index
                s.err_b = s.limit
                err = E_SIZE
                break
            s.max_size = index
            while s.count and s.size > s.max_size:
                _evict(s)
        else:
            incremental = (c & 0xC0) == 0x40
            i = _int(b, i, n, 6 if incremental else 4, &index)
            if i < 0:
                err = <int>-i
                break
            if index:
                err = _lookup(s, index, &name, &nlen, &value, &vlen, &field)
                if err == E_UNKNOWN:
                    # its name cannot be known: the value is not a field's;
                    # an entry it adds is known as such (its size too small
                    # by the name's: kept longer, never referred to wrongly)
                    err = 0
                    name = NULL
                    nlen = 0
                    field = F_UNKNOWN
                elif err:
                    break
            else:
                i = _name(s, b, i, n, &name, &nlen, &field)
                if i < 0:
                    err = <int>-i
                    break
            i = _string(s, b, i, n, &s.hvalue, &value, &vlen)
            if i < 0:
                err = <int>-i
                break
            err = _emit(k, field, name, nlen, value, vlen)  # before _add, which may evict the name
            if incremental and not err:
                err = _add(s, name, nlen, value, vlen, field)
        if err:
            break
    if err:
        s.error = err
    return err


cdef class HpackDecoder:
    """The HPACK state of one connection and direction."""
    cdef hstate_t s

    def __cinit__(self, Py_ssize_t max_table_size=65536):
        self.s.limit = max_table_size
        self.s.max_size = min(4096, max_table_size)  # SETTINGS_HEADER_TABLE_SIZE's initial value

    def __dealloc__(self):
        if self.s.ring != NULL:
            while self.s.count:
                _evict(&self.s)
            free(self.s.ring)
        free(self.s.frag.p)
        free(self.s.hname.p)
        free(self.s.hvalue.p)

    @property
    def table_size(self):
        """Bytes the dynamic table holds (RFC 7541 4.1: name + value + 32 each)."""
        return self.s.size

    @property
    def error(self):
        """The message of the error that broke this decoder, else None."""
        return _message(&self.s, self.s.error) if self.s.error else None

    def decode(self, block):
        """(data bytes, offsets int32 array of 2k+1) of the k headers of one
        header block: header i's name is data[off[2i]:off[2i+1]], its value
        data[off[2i+1]:off[2i+2]]. ValueError on a decoding error."""
        cdef const uint8_t[::1] b = memoryview(bytes(block)).cast("B") if len(block) else memoryview(b"\0")
        cdef sink_t *k = <sink_t *>malloc(sizeof(sink_t))
        cdef int err
        if k == NULL:
            raise MemoryError()
        k.every = True
        k.all.p = NULL
        k.all.n = k.all.cap = 0
        k.offs.p = NULL
        k.offs.n = k.offs.cap = 0
        try:
            if bytebuf_reserve(&k.offs, 4) < 0:
                raise MemoryError()
            (<int32_t *>k.offs.p)[0] = 0
            k.offs.n = 4
            err = _decode_block(&self.s, &b[0], len(block), k)
            if err:
                raise ValueError(f"hpack: {_message(&self.s, err)}")
            data = (<char *>k.all.p)[:k.all.n] if k.all.n else b""
            offsets = np.frombuffer((<char *>k.offs.p)[:k.offs.n], np.int32).copy()
            return data, offsets
        finally:
            free(k.all.p)
            free(k.offs.p)
            free(k)


cdef hstate_t *hpack_new(int64_t max_table_size, bint partial) noexcept nogil:
    cdef hstate_t *s = <hstate_t *>calloc(1, sizeof(hstate_t))
    if s == NULL:
        return NULL
    s.partial = partial
    s.limit = max_table_size
    s.max_size = 4096 if max_table_size > 4096 else max_table_size  # SETTINGS_HEADER_TABLE_SIZE's initial value
    return s  # its ring comes with its first entry (_grow)


cdef int hpack_block_kind(const uint8_t *b, int64_t n) noexcept nogil:
    cdef int64_t i = 0, index, length
    cdef int prefix, f
    while i < n:
        if (b[i] & 0xE0) == 0x20:  # a size update
            i = _int(b, i, n, 5, &index)
            if i < 0:
                return 0
            continue
        prefix = 7 if b[i] & 0x80 else 6 if (b[i] & 0xC0) == 0x40 else 4
        i = _int(b, i, n, prefix, &index)
        if i < 0:
            return 0
        if 1 <= index <= 14:  # the static table's pseudo-headers
            return 1 if index <= 7 else 2
        if prefix == 7:
            continue
        for f in range(1 if index else 2):  # the literal's name (when new), its value: skipped
            if i >= n:
                return 0
            if f == 0 and not index and not b[i] & 0x80 and i + 1 < n and b[i + 1] == 58:
                # a pseudo-header's plain name
                return 2 if b[i] == 7 and i + 8 <= n and memcmp(b + i + 1, b":status", 7) == 0 else 1
            i = _int(b, i, n, 7, &length)
            if i < 0 or length > n - i:
                return 0
            i += length
    return 0


cdef void hpack_free(hstate_t *s) noexcept nogil:
    if s == NULL:
        return
    while s.count:
        _evict(s)
    free(s.ring)
    free(s.frag.p)
    free(s.hname.p)
    free(s.hvalue.p)
    free(s)


cdef int hpack_fields(hstate_t *s, const uint8_t *b, int64_t n, hdr_t *rec, bytebuf *arena, bint ctx) noexcept nogil:
    cdef sink_t sink  # on the stack (2.4 kB): one per block, no malloc
    cdef sink_t *k = &sink
    cdef int err
    k.every = False
    k.arena = arena
    k.rec = rec
    _rec_start(k)
    err = _decode_block(s, b, n, k)
    if err:
        rec.state = 2
        rec.error = err
    else:
        rec.state = 1
        if ctx:
            _rec_end(k)
    return err


cdef str _message(hstate_t *s, int err):
    if err == E_INDEX:
        return f"index {s.err_a} not in the tables (dynamic table has {s.err_b} entries)"
    if err == E_STR_CUT:
        return f"string of {s.err_a} bytes, {s.err_b} left in the block"
    if err == E_SIZE:
        return f"table size update to {s.err_a}, above {s.err_b}"
    return ERRORS[err]


def decode_headers(payloads, rows, which, decoders):
    """Header blocks of HTTP/2 frames -> (records, arena).

    ``payloads``: the pyarrow binary array ``dkebpf._http2.parse`` read;
    ``rows``: its frame rows; ``which[i]``: the index in ``decoders`` (a
    sequence of HpackDecoder, one per connection and direction) of row i's
    connection, or -1 to skip the row. Rows go in capture order per
    connection: a HEADERS or PUSH_PROMISE frame starts a block, its
    CONTINUATIONs add to it, the frame with END_HEADERS (0x4) ends it.

    ``records``: HEADERS_DTYPE, one per row; ``state`` 1 where a block ended
    and was decoded, 2 where decoding failed (``error``: an index into
    ERRORS; the decoder is broken from then on), 0 elsewhere. String fields
    (STRING_FIELDS, ``str_off``/``str_len`` in that order) are bytes of
    ``arena`` (numpy uint8), length 0xFFFFFFFF when the header is absent.
    """
    cdef payload_view pv = view_payloads(payloads)
    cdef Py_ssize_t nrows = len(rows), nd = len(decoders), j, a
    if len(which) != nrows:
        raise ValueError(f"decode_headers: {len(which)} connection indexes for {nrows} rows")
    if nrows and rows.dtype.names is None:
        raise TypeError("decode_headers: rows must be the frame rows of dkebpf._http2.parse")
    ev_a = np.ascontiguousarray(rows["ev"], np.uint32)
    cdef const uint32_t[::1] ev = ev_a
    cdef const uint32_t[::1] boff = np.ascontiguousarray(rows["block_off"], np.uint32)
    cdef const uint32_t[::1] blen = np.ascontiguousarray(rows["block_len"], np.uint32)
    cdef const uint8_t[::1] typ = np.ascontiguousarray(rows["type"], np.uint8)
    cdef const uint8_t[::1] flags = np.ascontiguousarray(rows["flags"], np.uint8)
    cdef const uint8_t[::1] valid = np.ascontiguousarray(rows["valid"], np.uint8)
    cdef const uint8_t[::1] complete = np.ascontiguousarray(rows["complete"], np.uint8)
    cdef const int32_t[::1] conn = np.ascontiguousarray(which, np.int32)
    if nrows and (ev_a.max() >= pv.n):
        raise ValueError("decode_headers: a row's ev is past the payloads")
    cdef hstate_t **states = <hstate_t **>malloc((nd + 1) * sizeof(hstate_t *))
    cdef sink_t *k = <sink_t *>malloc(sizeof(sink_t))
    cdef bytebuf arena
    cdef hstate_t *s
    cdef const uint8_t *p
    cdef int64_t plen
    cdef int err
    cdef int32_t w
    arena.p = NULL
    arena.n = arena.cap = 0
    out = np.zeros(nrows, HEADERS_DTYPE)
    out["str_len"] = 0xFFFFFFFF  # rows without a block: every header absent
    out["grpc_status"] = -1
    cdef hdr_t *recs = <hdr_t *>cnp.PyArray_DATA(out)
    try:
        if states == NULL or k == NULL:
            raise MemoryError()
        for j in range(nd):
            states[j] = &(<HpackDecoder?>decoders[j]).s
        k.every = False
        k.arena = &arena
        with nogil:
            for j in range(nrows):
                w = conn[j]
                if w < 0 or w >= nd or not valid[j] or not (typ[j] == 1 or typ[j] == 5 or typ[j] == 9):
                    continue
                s = states[w]
                k.rec = &recs[j]
                _rec_start(k)
                err = 0
                a = payload_start(&pv, ev[j])
                plen = payload_start(&pv, ev[j] + 1) - a
                p = pv.data + a + boff[j]
                if s.error:
                    if not (flags[j] & 0x4):
                        continue  # a broken connection's block is reported once, where it ends
                    err = E_BROKEN
                elif not complete[j] or <int64_t>boff[j] + blen[j] > plen:
                    err = E_CUT_FRAME
                elif typ[j] == 9 and not s.pending:
                    err = E_CONTINUATION
                elif flags[j] & 0x4 and typ[j] != 9:  # a whole block in one frame: decoded in place
                    s.pending = False
                    err = _decode_block(s, p, blen[j], k)
                    recs[j].state = 1
                else:
                    if typ[j] != 9:
                        s.frag.n = 0
                    if bytebuf_reserve(&s.frag, blen[j]) < 0:
                        err = E_NOMEM
                    else:
                        memcpy(s.frag.p + s.frag.n, p, blen[j])
                        s.frag.n += blen[j]
                        s.pending = not (flags[j] & 0x4)
                        if not s.pending:
                            err = _decode_block(s, s.frag.p, s.frag.n, k)
                            recs[j].state = 1
                if err:
                    if not s.error:
                        s.error = err
                    s.pending = False
                    recs[j].state = 2
                    recs[j].error = err
                elif recs[j].state == 1:
                    _rec_end(k)
        data = np.frombuffer((<char *>arena.p)[:arena.n], np.uint8).copy() if arena.n else np.zeros(0, np.uint8)
        return out, data
    finally:
        free(states)
        free(k)
        free(arena.p)


def strings(records, arena, field):
    """Column ``field`` (one of STRING_FIELDS) of ``decode_headers``'s
    records as a pyarrow large_binary array, null where the header was
    absent (numpy gathers, no Python object per row)."""
    import pyarrow as pa
    f = STRING_FIELDS.index(field)
    off = np.ascontiguousarray(records["str_off"][:, f], np.int64)
    ln = np.ascontiguousarray(records["str_len"][:, f], np.int64)
    absent = ln == 0xFFFFFFFF
    ln = np.where(absent, 0, ln)
    offsets = np.zeros(len(ln) + 1, np.int64)
    np.cumsum(ln, out=offsets[1:])
    total = int(offsets[len(ln)])
    # gather arena[off:off+len] for every row, in one pass
    idx = np.repeat(off - offsets[:len(ln)], ln) + np.arange(total)
    data = np.asarray(arena, np.uint8)[idx]
    mask = pa.array(~absent).buffers()[1] if absent.any() else None
    return pa.Array.from_buffers(pa.large_binary(), len(ln), [mask, pa.py_buffer(offsets), pa.py_buffer(data)])

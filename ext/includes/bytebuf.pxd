# A growable byte buffer in C memory, for the parsers that build output or
# scratch text with the GIL released (ext/hpack.pyx, the line-protocol
# reader of ext/lineproto.pyx). Zero-initialise it; its owner frees p.
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport realloc


cdef struct bytebuf:
    uint8_t *p
    int64_t n, cap


cdef inline int bytebuf_reserve(bytebuf *b, int64_t more) noexcept nogil:
    """Room for `more` bytes after b.n (doubling); -1 when out of memory."""
    cdef int64_t cap
    cdef uint8_t *p
    if b.n + more <= b.cap:
        return 0
    cap = 2 * b.cap if 2 * b.cap > b.n + more else b.n + more + 4096
    p = <uint8_t *>realloc(b.p, cap)
    if p == NULL:
        return -1
    b.p = p
    b.cap = cap
    return 0

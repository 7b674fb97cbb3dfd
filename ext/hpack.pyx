"""HPACK (RFC 7541) header block decoding for HTTP/2 spans: one decoder per
connection and direction, since each end keeps its own dynamic table.

A block decodes into one bytes object and one offsets array (names and
values alternating), not a Python object per header. Representations:
indexed (static table 1..61, dynamic 62..), literal with incremental
indexing, without indexing, never indexed, and dynamic table size updates
(up to ``max_table_size``, the largest the decoder accepts). Strings may be
Huffman coded (Appendix B; the code is canonical, so decoding walks code
lengths with one first-code and count per length). Tables:
ext/includes/hpack_tables.h.

A decoding error raises ValueError naming it; the connection's table is
then unknown, so the span builder stops decoding that connection (a
connection seen mid-stream is in that state from the start: its indexed
headers refer to entries it never saw).

``tests/reference/hpack_ref.py`` holds the same rules in plain Python.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, strlen

import numpy as np

__all__ = ["HpackDecoder"]

cdef extern from "hpack_tables.h":
    const uint32_t HPACK_HUFFMAN_CODE[257]
    const uint8_t HPACK_HUFFMAN_BITS[257]
    const char *const HPACK_STATIC_NAME[62]
    const char *const HPACK_STATIC_VALUE[62]

# canonical Huffman decoding tables, per code length 1..30
cdef uint32_t FIRST[31]
cdef uint32_t COUNT[31]
cdef uint32_t START[31]
cdef uint32_t SYMS[257]


def _init_huffman():
    order = sorted(range(257), key=lambda s: (HPACK_HUFFMAN_BITS[s], HPACK_HUFFMAN_CODE[s]))
    cdef int i, n = 0, length
    for length in range(31):
        COUNT[length] = 0
        FIRST[length] = 0
        START[length] = 0
    for i, s in enumerate(order):
        SYMS[i] = s
        length = HPACK_HUFFMAN_BITS[s]
        if COUNT[length] == 0:
            FIRST[length] = HPACK_HUFFMAN_CODE[s]
            START[length] = i
        elif HPACK_HUFFMAN_CODE[s] != FIRST[length] + COUNT[length]:
            raise ImportError("hpack_tables.h: the Huffman code is not canonical")
        COUNT[length] += 1


_init_huffman()


cdef struct entry_t:
    char *blob  # name then value
    int nlen, vlen


cdef class HpackDecoder:
    cdef entry_t *ring
    cdef int cap, head, count  # head: slot of the newest entry
    cdef Py_ssize_t size, max_size, limit
    cdef bytearray out

    def __cinit__(self, Py_ssize_t max_table_size=65536):
        self.limit = max_table_size
        self.max_size = min(4096, max_table_size)  # SETTINGS_HEADER_TABLE_SIZE's initial value
        self.cap = max_table_size // 32 + 1
        self.ring = <entry_t *>malloc(self.cap * sizeof(entry_t))
        if self.ring == NULL:
            raise MemoryError()
        self.head = 0
        self.count = 0
        self.size = 0

    def __dealloc__(self):
        if self.ring != NULL:
            while self.count:
                self._evict()
            free(self.ring)

    @property
    def table_size(self):
        """Bytes the dynamic table holds (RFC 7541 4.1: name + value + 32 each)."""
        return self.size

    cdef void _evict(self) noexcept:
        cdef int oldest = (self.head - self.count + 1 + self.cap) % self.cap
        self.size -= self.ring[oldest].nlen + self.ring[oldest].vlen + 32
        free(self.ring[oldest].blob)
        self.count -= 1

    cdef int _add(self, const char *name, int nlen, const char *value, int vlen) except -1:
        cdef Py_ssize_t need = nlen + vlen + 32
        while self.count and self.size + need > self.max_size:
            self._evict()
        if need > self.max_size:
            return 0  # larger than the table: it empties it and is not added (4.4)
        cdef char *blob = <char *>malloc(nlen + vlen + 1)
        if blob == NULL:
            raise MemoryError()
        memcpy(blob, name, nlen)
        memcpy(blob + nlen, value, vlen)
        self.head = (self.head + 1) % self.cap
        self.ring[self.head].blob = blob
        self.ring[self.head].nlen = nlen
        self.ring[self.head].vlen = vlen
        self.count += 1
        self.size += need
        return 0

    cdef int _lookup(self, int64_t index, const char **name, int *nlen, const char **value, int *vlen) except -1:
        cdef int slot
        if 1 <= index <= 61:
            name[0] = HPACK_STATIC_NAME[index]
            nlen[0] = strlen(name[0])
            value[0] = HPACK_STATIC_VALUE[index]
            vlen[0] = strlen(value[0])
            return 0
        if index < 1 or index - 62 >= self.count:
            raise ValueError(f"hpack: index {index} not in the tables (dynamic table has {self.count} entries)")
        slot = (self.head - <int>(index - 62) + self.cap) % self.cap
        name[0] = self.ring[slot].blob
        nlen[0] = self.ring[slot].nlen
        value[0] = self.ring[slot].blob + self.ring[slot].nlen
        vlen[0] = self.ring[slot].vlen
        return 0

    def decode(self, block):
        """(data bytes, offsets int32 array of 2k+1) of the k headers of one
        header block: header i's name is data[off[2i]:off[2i+1]], its value
        data[off[2i+1]:off[2i+2]]."""
        cdef const uint8_t[::1] b = memoryview(bytes(block)).cast("B") if len(block) else memoryview(b"\0")
        cdef Py_ssize_t n = len(block), i = 0
        cdef int64_t index
        cdef uint8_t c
        cdef const char *name
        cdef const char *value
        cdef int nlen, vlen
        cdef bytes nbuf, vbuf
        self.out = bytearray()
        offsets = [0]
        while i < n:
            c = b[i]
            if c & 0x80:  # indexed
                i = _int(b, i, n, 7, &index)
                self._lookup(index, &name, &nlen, &value, &vlen)
                self._emit(name[:nlen], value[:vlen], offsets)
            elif (c & 0xE0) == 0x20:  # size update
                i = _int(b, i, n, 5, &index)
                if index > self.limit:
                    raise ValueError(f"hpack: table size update to {index}, above {self.limit}")
                self.max_size = index
                while self.count and self.size > self.max_size:
                    self._evict()
            else:
                prefix = 6 if (c & 0xC0) == 0x40 else 4
                i = _int(b, i, n, prefix, &index)
                if index:
                    self._lookup(index, &name, &nlen, &value, &vlen)
                    nbuf = name[:nlen]
                else:
                    i, nbuf = _string(b, i, n)
                i, vbuf = _string(b, i, n)
                if prefix == 6:
                    self._add(nbuf, len(nbuf), vbuf, len(vbuf))
                self._emit(nbuf, vbuf, offsets)
        return bytes(self.out), np.array(offsets, np.int32)

    cdef _emit(self, bytes name, bytes value, list offsets):
        self.out += name
        offsets.append(len(self.out))
        self.out += value
        offsets.append(len(self.out))


cdef Py_ssize_t _int(const uint8_t[::1] b, Py_ssize_t i, Py_ssize_t n, int prefix, int64_t *out) except -1:
    """The integer with an N-bit prefix at b[i] (5.1) -> out; the index after it."""
    cdef int64_t mask = (1 << prefix) - 1, v = b[i] & mask
    cdef int shift = 0
    i += 1
    if v == mask:
        while True:
            if i >= n:
                raise ValueError("hpack: integer cut")
            if shift > 28:
                raise ValueError("hpack: integer too large")
            v += <int64_t>(b[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not (b[i - 1] & 0x80):
                break
    out[0] = v
    return i


cdef tuple _string(const uint8_t[::1] b, Py_ssize_t i, Py_ssize_t n):
    """(index after, bytes) of the string literal at b[i] (5.2)."""
    if i >= n:
        raise ValueError("hpack: string missing")
    cdef bint huff = b[i] & 0x80
    cdef int64_t length
    i = _int(b, i, n, 7, &length)
    if length > n - i:
        raise ValueError(f"hpack: string of {length} bytes, {n - i} left in the block")
    if not huff:
        return i + length, bytes(b[i:i + length])
    return i + length, _huffman(b, i, i + length)


cdef bytes _huffman(const uint8_t[::1] b, Py_ssize_t a, Py_ssize_t e):
    cdef bytearray out = bytearray()
    cdef uint32_t code = 0
    cdef int length = 0, bit
    cdef uint32_t sym
    cdef Py_ssize_t i
    for i in range(a, e):
        for bit in range(7, -1, -1):
            code = (code << 1) | ((b[i] >> bit) & 1)
            length += 1
            if length > 30:
                raise ValueError("hpack: bad Huffman code")
            if COUNT[length] and code - FIRST[length] < COUNT[length] and code >= FIRST[length]:
                sym = SYMS[START[length] + code - FIRST[length]]
                if sym == 256:
                    raise ValueError("hpack: EOS inside a Huffman string")
                out.append(sym)
                code = 0
                length = 0
    # padding: fewer than 8 bits, all ones (the most significant bits of EOS)
    if length > 7 or code != (1u << length) - 1:
        raise ValueError("hpack: bad Huffman padding")
    return bytes(out)

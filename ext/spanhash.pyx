"""64-bit hashes of Arrow string columns for the linker's joins
(dkebpf/linker/join.py): addresses and ports are compared as hashes, so the
join runs on integer columns and the history keeps 8 bytes per address
instead of a string. FNV-1a over the bytes, then the splitmix64 finalizer
for spread; with 64 bits, two different addresses of one horizon collide
with odds of ~n^2/2^65 (1e-8 for a million addresses).
"""
from libc.stdint cimport int64_t, uint8_t, uint64_t

import numpy as np
import pyarrow as pa
cimport numpy as cnp

from payloads cimport payload_view, view_payloads, payload_start

cnp.import_array()

__all__ = ["hash_strings"]


cdef inline uint64_t _hash(const uint8_t *p, int64_t n) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL
    cdef int64_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL
    return h ^ (h >> 31)


def hash_strings(strings):
    """uint64 numpy array: the hash of each string (a null hashes as "")."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    if pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type):
        strings = strings.view(pa.large_binary() if pa.types.is_large_string(strings.type) else pa.binary())
    cdef payload_view v = view_payloads(strings)
    out = np.empty(v.n, np.uint64)
    cdef uint64_t[::1] o = out
    cdef Py_ssize_t j
    cdef int64_t a
    with nogil:
        for j in range(v.n):
            a = payload_start(&v, j)
            o[j] = _hash(v.data + a, payload_start(&v, j + 1) - a)
    return out

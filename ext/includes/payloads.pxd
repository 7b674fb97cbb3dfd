# Captured payloads handed to the protocol parsers (ext/redis.pyx,
# ext/mysql.pyx, ext/pgsql.pyx, ext/http2.pyx, ...) as one pyarrow Binary or LargeBinary array: one data
# buffer and n+1 offsets, read in place with the GIL released. The view
# borrows the array's buffers: the caller keeps the array alive.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
cimport numpy as cnp

cdef struct payload_view:
    const uint8_t *data
    const int32_t *offsets32   # Binary
    const int64_t *offsets     # LargeBinary
    Py_ssize_t n
    bint wide

cdef inline payload_view view_payloads(payloads) except *:
    import pyarrow as pa
    cdef payload_view v
    cdef Py_ssize_t first
    cdef size_t addr
    if isinstance(payloads, pa.ChunkedArray):
        payloads = payloads.combine_chunks()
    if not isinstance(payloads, (pa.BinaryArray, pa.LargeBinaryArray)):
        raise TypeError(f"payloads must be a pyarrow binary array, not {type(payloads).__name__}")
    bufs = payloads.buffers()
    v.wide = isinstance(payloads, pa.LargeBinaryArray)
    v.n = len(payloads)
    if v.n == 0 or bufs[1] is None:
        v.n = 0
        v.offsets32 = NULL
        v.offsets = NULL
        v.data = NULL  # no bytes to read
        return v
    # a sliced array starts `offset` entries into its offsets buffer
    first = payloads.offset
    addr = bufs[1].address
    if v.wide:
        v.offsets = <const int64_t *>addr + first
        v.offsets32 = NULL
    else:
        v.offsets32 = <const int32_t *>addr + first
        v.offsets = NULL
    if bufs[2] is None:
        v.data = NULL  # no bytes to read
    else:
        addr = bufs[2].address
        v.data = <const uint8_t *>addr
    return v

cdef inline int64_t payload_start(const payload_view *v, Py_ssize_t j) noexcept nogil:
    return v.offsets[j] if v.wide else v.offsets32[j]


# One payload's messages -> rows. Writes at most `room` rows of the
# parser's row struct at `rows` (whose first member is `uint32_t ev`, set
# by the driver) and returns how many; -1 when `room` was too small (the
# driver grows the output and calls again for the same payload).
ctypedef Py_ssize_t (*payload_parser)(const uint8_t *p, int64_t n, uint8_t flag,
                                      char *rows, Py_ssize_t room) noexcept nogil


cdef inline object parse_rows(payloads, flags, payload_parser parse, row_dtype):
    """numpy structured array (row_dtype) of the rows `parse` finds in
    each payload, in order; flags: one uint8 per payload for the parser
    (which way the payload went)."""
    import numpy as np
    cdef payload_view pv = view_payloads(payloads)
    cdef const uint8_t[::1] fl = np.ascontiguousarray(flags, dtype=np.uint8)
    if fl.shape[0] != pv.n:
        raise ValueError(f"{pv.n} payloads but {fl.shape[0]} direction flags")
    cdef Py_ssize_t size = row_dtype.itemsize, cap = 2 * pv.n + 16, used = 0, got, j = 0, r
    cdef int64_t a
    rows = np.zeros(cap, row_dtype)
    cdef char *base
    while True:
        base = <char *>cnp.PyArray_DATA(rows)
        with nogil:
            while j < pv.n:
                a = payload_start(&pv, j)
                got = parse(pv.data + a, payload_start(&pv, j + 1) - a, fl[j],
                            base + used * size, cap - used)
                if got < 0:
                    break
                for r in range(used, used + got):
                    (<uint32_t *>(base + r * size))[0] = <uint32_t>j
                used += got
                j += 1
        if j == pv.n:
            return rows[:used]
        cap *= 2
        grown = np.zeros(cap, row_dtype)  # parsers count on zeroed rows
        grown[:used] = rows[:used]
        rows = grown

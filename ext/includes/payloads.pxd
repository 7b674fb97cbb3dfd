# Captured payloads handed to the protocol parsers (ext/redis.pyx,
# ext/mysql.pyx, ...) as one pyarrow Binary or LargeBinary array: one data
# buffer and n+1 offsets, read in place with the GIL released. The view
# borrows the array's buffers: the caller keeps the array alive.
from libc.stdint cimport int32_t, int64_t, uint8_t

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

# C-level interface of dkebpf._tracectx (ext/tracectx.pyx), for other Cython
# modules (the HPACK decoder reads the same headers from HTTP/2 blocks):
#     from dkebpf._tracectx cimport ctx_t, CTX_HEADERS, ctx_header, ctx_from_values
# The functions are reached through the module's C-API capsules, so the
# cimporting module needs dkebpf._tracectx importable at run time.
from libc.stdint cimport int8_t, uint8_t, uint64_t

cdef enum:
    CTX_HEADERS = 9  # trace-context header names tracectx knows (ctx_header's range)

# An app trace context: the columns of tracectx.extract.
cdef struct ctx_t:
    uint64_t hi, lo, parent
    int8_t sampled
    uint8_t source

# Which trace-context header the name p[0:n] is (any case): 0..CTX_HEADERS-1,
# or -1 for another header.
cdef int ctx_header(const uint8_t *p, int n) noexcept nogil

# The context the header values give (val[h]/vlen[h] the value of header h,
# vlen[h] < 0 when absent; values at most 256 bytes are read), with the
# module's order of precedence -> c (source 0 when none is valid).
cdef void ctx_from_values(const uint8_t **val, const int *vlen, ctx_t *c) noexcept nogil

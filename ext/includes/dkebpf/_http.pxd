# C-level interface of dkebpf._http (ext/http.pyx), for other Cython modules:
#     from dkebpf._http cimport http_msg, parse_first_line, message_end, K_REQUEST
# The functions are reached through the module's C-API capsules, so the
# cimporting module needs dkebpf._http importable at run time.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:  # http_msg.kind
    K_REQUEST = 1
    K_RESPONSE = 2
    K_CLOSE = 3

# One message start found in an l7_event payload (one MSG_DTYPE row).
cdef struct http_msg:
    uint64_t sk
    uint64_t ts
    uint32_t pid
    uint32_t ev        # index of the event in the batch
    uint32_t seg_len   # bytes of this message within its call (next message or the call's end)
    uint16_t off       # where the message starts in the payload
    uint16_t path_off  # request path (without query) within the payload
    uint16_t path_len
    uint16_t status
    uint8_t kind       # K_*
    uint8_t method     # index into dkebpf._http.METHODS; 0 none
    uint8_t version    # 10, 11; 0 unknown (line cut by the capture limit)
    uint8_t truncated  # the path ran into the capture limit

# The request or status line at p[0:n] -> m (kind, method, path, version,
# status, truncated); 1 on a message start, 0 otherwise.
cdef int parse_first_line(const uint8_t *p, int n, http_msg *m) noexcept nogil

# Where the message m starting at p[0] ends within p[0:n] (headers and
# Content-Length); -1 when not inside the capture or not knowable.
cdef int message_end(const uint8_t *p, int n, const http_msg *m) noexcept nogil

# The bytes of the message m starting at p[0] (its header block inside
# p[0:n]; the body may run past n); -1 when not knowable.
cdef int64_t message_length(const uint8_t *p, int n, const http_msg *m) noexcept nogil

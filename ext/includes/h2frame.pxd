# HTTP/2 frame headers (RFC 9113 4.1), the one parser of ext/http2.pyx (frame
# rows of captured payloads) and ext/h2trace.pyx (streams across calls).
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcmp

cdef enum:
    H2_DATA = 0
    H2_HEADERS = 1
    H2_PRIORITY = 2
    H2_RST_STREAM = 3
    H2_SETTINGS = 4
    H2_PUSH_PROMISE = 5
    H2_PING = 6
    H2_GOAWAY = 7
    H2_WINDOW_UPDATE = 8
    H2_CONTINUATION = 9
    H2_FLAG_END_STREAM = 0x1
    H2_FLAG_END_HEADERS = 0x4
    H2_FLAG_PADDED = 0x8
    H2_FLAG_PRIORITY = 0x20


cdef struct h2_frame_t:
    uint32_t length   # of the payload, without the 9-byte header
    uint32_t stream
    uint8_t type, flags


cdef inline bint h2_frame_header(const uint8_t *p, h2_frame_t *f) noexcept nogil:
    """The 9-byte frame header at p -> f. False when it breaks what senders
    must do, taken as not HTTP/2: the reserved stream bit set, a type above
    0x10 (the registered ones), a stream frame (DATA, HEADERS, PRIORITY,
    RST_STREAM, PUSH_PROMISE, CONTINUATION) on stream 0, a SETTINGS, PING or
    GOAWAY on another stream."""
    f.length = (<uint32_t>p[0] << 16) | (<uint32_t>p[1] << 8) | p[2]
    f.type = p[3]
    f.flags = p[4]
    f.stream = ((<uint32_t>p[5] & 0x7F) << 24) | (<uint32_t>p[6] << 16) | (<uint32_t>p[7] << 8) | p[8]
    if p[5] & 0x80 or f.type > 0x10:
        return False
    if f.stream == 0 and (f.type <= H2_RST_STREAM or f.type == H2_PUSH_PROMISE or f.type == H2_CONTINUATION):
        return False
    if f.stream != 0 and (f.type == H2_SETTINGS or f.type == H2_PING or f.type == H2_GOAWAY):
        return False
    return True


cdef inline bint h2_preface_at(const uint8_t *p, int64_t n) noexcept nogil:
    """Does p[0:n] start with the client connection preface (3.4)?"""
    return n >= 24 and memcmp(p, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24) == 0


cdef extern from "include/h2frame.h" nogil:
    # Is p[0:n] (n <= TRACE_PAYLOAD_MAX) a run of at most 8 whole HTTP/2
    # frames ending at n? The rule by which the kernel flags a connection
    # seen mid-stream (span_h2_mark): one C source, compiled into the BPF
    # programs and here, so the tracker judges a call as the kernel did.
    bint h2_frames_exact(const uint8_t *p, uint32_t n)

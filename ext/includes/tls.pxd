# Declarations of bpf/include/tls.h (drop counters of bpf/tls.bpf.c beyond
# the pairing's HTTP_DROP_*, http_maps.pxd).
cdef extern from "include/tls.h" nogil:
    enum:
        TLS_DROP_NO_SOCK
        TLS_DROP_NOT_TCP
        TLS_DROP_CALLS
        TLS_DROP_SOCKS
        TLS_DROP_SPAN_RING
        TLS_DROP_SPAN_CONNS
        TLS_SK_TAG
        TLS_DROP_MAX

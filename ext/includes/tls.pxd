# Declarations of bpf/include/tls.h (drop counters of bpf/tls.bpf.c).
cdef extern from "include/tls.h" nogil:
    enum:
        TLS_DROP_RING
        TLS_DROP_NO_SOCK
        TLS_DROP_NOT_TCP
        TLS_DROP_PAYLOAD
        TLS_DROP_CALLS
        TLS_DROP_SOCKS
        TLS_DROP_CONNS
        TLS_DROP_MAX

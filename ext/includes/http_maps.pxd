# Declarations of bpf/include/http.h (maps of bpf/http.bpf.c).
cdef extern from "include/http.h" nogil:
    enum:
        HTTP_DROP_RING
        HTTP_DROP_CALLS
        HTTP_DROP_CONNS
        HTTP_DROP_READ
        HTTP_DROP_MAX

    cdef struct http_conn:
        unsigned long long sent
        unsigned long long recv
        unsigned long long ts_last_send
        unsigned long long ts_last_recv
        unsigned int pid
        unsigned char direction

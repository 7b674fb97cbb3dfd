# Declarations of bpf/include/http.h (the exchanges paired in the kernel by
# bpf/http.bpf.c and bpf/tls.bpf.c).
cdef extern from "include/http.h" nogil:
    enum:
        HTTP_HEAD_MAX
        HTTP_DROP_RING
        HTTP_DROP_CONNS
        HTTP_DROP_READ
        HTTP_DROP_NOT_COVERED
        HTTP_DROP_FIFO_FULL
        HTTP_DROP_UNMATCHED
        HTTP_DROP_UNANSWERED
        HTTP_DROP_MAX
        HTTP_X_CLOSED
        HTTP_X_SETTLED
        HTTP_SRC_SYSCALL
        HTTP_SRC_SSL
        HTTP_FLUSH_BYTES
        HTTP_EXCHANGE_MIN_SIZE

    cdef struct http_exchange:
        unsigned long long sk
        unsigned long long ts_req
        unsigned long long ts_resp
        unsigned long long latency_ns
        unsigned long long req_bytes
        unsigned long long resp_bytes
        unsigned char laddr[16]
        unsigned char raddr[16]
        unsigned short lport
        unsigned short rport
        unsigned int pid
        unsigned int tid
        unsigned short status
        unsigned short head_len
        unsigned char family
        unsigned char proto
        unsigned char direction
        unsigned char source
        unsigned char resp_version
        unsigned char flags
        char comm[16]
        unsigned char head[HTTP_HEAD_MAX]

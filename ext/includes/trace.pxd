# Declarations of bpf/include/trace.h (the one definition of ebpf-trace's
# kernel record).
cdef extern from "include/trace.h" nogil:
    enum:
        TRACE_PAYLOAD_MAX
        TRACE_OP_SEND
        TRACE_OP_RECV
        TRACE_OP_CLOSE
        TRACE_PID_TRACED
        TRACE_PID_EXCLUDED
        TRACE_DROP_RING
        TRACE_DROP_CONNS
        TRACE_DROP_READ
        TRACE_DROP_PIDS
        TRACE_DROP_MAX
        SPAN_MSG_MIN_SIZE
        TRACE_SHORT_START
        TRACE_MORE_SHORT
        TRACE_MORE_H2_CALL
        TRACE_FLAG_IGNORED
        TRACE_FLAG_WHOLE

    cdef struct trace_conn:
        unsigned long long sent
        unsigned long long recv
        unsigned long long ts_last_send
        unsigned long long ts_last_recv
        unsigned char last_op
        unsigned char short_start
        unsigned char ignored
        unsigned char h2
        unsigned char whole
        unsigned long long born

    cdef struct trace_flags:
        unsigned long long born
        unsigned int bits

    cdef struct span_msg:
        unsigned long long ts_ns
        unsigned long long sk
        unsigned long long sk_sent
        unsigned long long sk_recv
        unsigned long long ts_last_send
        unsigned long long ts_last_recv
        unsigned long long user
        unsigned char laddr[16]
        unsigned char raddr[16]
        unsigned int pid
        unsigned int tid
        unsigned int seq
        unsigned int bytes
        unsigned short lport
        unsigned short rport
        unsigned short cap_len
        unsigned char family
        unsigned char op
        unsigned char more
        unsigned char seq_unknown
        char comm[16]
        char pcomm[16]
        unsigned char payload[TRACE_PAYLOAD_MAX]


from libc.stdint cimport uint64_t
from dk_common cimport mix64


cdef inline uint64_t span_root_id(const span_msg *m) noexcept nogil:
    """thread_trace_id of an outgoing request linked to no incoming one (a
    root of its own), from its socket and time; never 0 (0 means unset).
    ext/trace.pyx (threads) and ext/goroutines.pyx (goroutines) both give it."""
    cdef uint64_t id_ = mix64(m.sk ^ mix64(m.ts_ns + 1)) & 0x7fffffffffffffffULL
    return id_ if id_ != 0 else 1

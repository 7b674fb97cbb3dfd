# Declarations of bpf/include/l7.h (the one definition of the L7 record).
cdef extern from "include/l7.h" nogil:
    enum:
        L7_PAYLOAD_MAX
        L7_OP_SEND
        L7_OP_RECV
        L7_OP_CLOSE
        L7_SRC_SYSCALL
        L7_SRC_SSL
        L7_F_COUNTED
        L7_EVENT_MIN_SIZE

    cdef struct l7_event:
        unsigned long long ts_ns
        unsigned long long sk
        unsigned char laddr[16]
        unsigned char raddr[16]
        unsigned short lport
        unsigned short rport
        unsigned int pid
        unsigned int tid
        unsigned int bytes
        unsigned short cap_len
        unsigned char family
        unsigned char proto
        unsigned char op
        unsigned char source
        unsigned char direction
        unsigned char flags
        char comm[16]
        unsigned long long sk_sent
        unsigned long long sk_recv
        unsigned long long ts_other_ns
        unsigned char payload[L7_PAYLOAD_MAX]

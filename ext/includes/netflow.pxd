# Declarations of bpf/include/netflow.h (the one definition of the records).
cdef extern from "include/netflow.h" nogil:
    enum:
        NF_COMM_LEN
        NF_DIR_UNKNOWN
        NF_DIR_OUTGOING
        NF_DIR_INCOMING
        NF_F_ESTABLISHED
        NF_F_CLOSED
        NF_DROP_RING
        NF_DROP_CONNS
        NF_DROP_BOUND
        NF_DROP_UDP_PEER
        NF_DROP_PEERS_MAP
        NF_DROP_MAX

    cdef struct nf_conn_key:
        unsigned long long sk
        unsigned char raddr[16]
        unsigned short rport

    cdef struct nf_conn_stats:
        unsigned long long ts_first
        unsigned long long ts_last
        unsigned long long bytes_sent
        unsigned long long bytes_recv
        unsigned char laddr[16]
        unsigned int pid
        unsigned int retransmits
        unsigned int rtt_us
        unsigned int rtt_var_us
        unsigned short lport
        unsigned char family
        unsigned char proto
        unsigned char direction
        unsigned char flags
        char comm[16]

    cdef struct nf_conn_event:
        nf_conn_key key
        nf_conn_stats stats

    cdef struct nf_port_key:
        unsigned short port
        unsigned char proto

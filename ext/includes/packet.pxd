# Declarations for AF_PACKET capture: linux/if_packet.h, linux/filter.h,
# sys/mman.h (sockets and poll: sysio.pxd). Declarations only; the binding
# is ext/packets.pyx.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<linux/if_ether.h>" nogil:
    enum:
        ETH_P_ALL
        ETH_P_IP
        ETH_P_IPV6
        ETH_P_8021Q
        ETH_P_8021AD

cdef extern from "<linux/if_arp.h>" nogil:
    enum:
        ARPHRD_ETHER
        ARPHRD_LOOPBACK

cdef extern from "<linux/filter.h>" nogil:
    struct sock_filter:
        uint16_t code
        uint8_t jt
        uint8_t jf
        uint32_t k
    struct sock_fprog:
        unsigned short len
        sock_filter *filter

cdef extern from "<linux/if_packet.h>" nogil:
    struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]
    enum:
        PACKET_RX_RING
        PACKET_VERSION
        PACKET_STATISTICS
        PACKET_IGNORE_OUTGOING
        TPACKET_V3
        TP_STATUS_KERNEL
        TP_STATUS_USER
        TP_STATUS_VLAN_VALID
        TP_STATUS_BLK_TMO
        PACKET_HOST
        PACKET_OUTGOING
    struct tpacket_req3:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
        unsigned int tp_retire_blk_tov
        unsigned int tp_sizeof_priv
        unsigned int tp_feature_req_word
    struct tpacket_stats_v3:
        unsigned int tp_packets
        unsigned int tp_drops
        unsigned int tp_freeze_q_cnt
    struct tpacket_bd_ts:
        unsigned int ts_sec
        unsigned int ts_nsec   # in a union with ts_usec: nanoseconds for TPACKET_V3
    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
        uint32_t blk_len
        tpacket_bd_ts ts_last_pkt   # when the block was closed: its last packet's time (CLOCK_REALTIME)
        tpacket_bd_ts ts_first_pkt  # when the kernel opened the block (CLOCK_REALTIME): no packet in it is older
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        uint32_t version
        uint32_t offset_to_priv
        tpacket_bd_header_u hdr
    struct tpacket_hdr_variant1:
        uint32_t tp_rxhash
        uint32_t tp_vlan_tci
        uint16_t tp_vlan_tpid
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        uint16_t tp_net
        tpacket_hdr_variant1 hv1   # in an anonymous union in the header
    size_t TPACKET_ALIGN(size_t x)

cdef extern from "<sys/mman.h>" nogil:
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
        MAP_PRIVATE
        MAP_ANONYMOUS
        MAP_LOCKED
        MADV_DONTNEED
    void *MAP_FAILED
    void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)
    int munmap(void *addr, size_t len)
    int madvise(void *addr, size_t len, int advice)

cdef extern from * nogil:
    # full barrier: the block status is read before the frames and written
    # back after them (Documentation/networking/packet_mmap.rst)
    void __sync_synchronize()
    # the spill's lowest free slot: the lowest bit set of a word of its bitmap
    int __builtin_ctzll(unsigned long long x)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *t, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)
    pthread_t pthread_self()
    int pthread_setname_np(pthread_t t, const char *name)

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)

cdef extern from * nogil:
    # the spill's indices and flags, shared by the spiller thread and the
    # reader (one writer each): gcc's atomics, acquire/release
    uint64_t __atomic_load_n(uint64_t *p, int order)
    void __atomic_store_n(uint64_t *p, uint64_t v, int order)
    uint64_t __atomic_exchange_n(uint64_t *p, uint64_t v, int order)
    uint64_t __atomic_add_fetch(uint64_t *p, uint64_t v, int order)
    uint64_t __atomic_sub_fetch(uint64_t *p, uint64_t v, int order)
    enum:
        __ATOMIC_ACQUIRE
        __ATOMIC_RELEASE
        __ATOMIC_RELAXED

cdef extern from "<poll.h>" nogil:
    enum:
        POLLERR

cdef extern from "<stdlib.h>" nogil:
    void *malloc(size_t n)
    void *calloc(size_t n, size_t size)
    void free(void *p)

# Declarations of ext/includes/dk_packet.h (the one definition of the records).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t

cdef extern from "dk_packet.h" nogil:
    enum:
        DK_NAME_MAX
        DK_NO_WSCALE

    struct dk_pkt:
        uint64_t ts_ns
        uint8_t saddr[16]
        uint8_t daddr[16]
        uint32_t payload_off
        uint32_t payload_len
        uint32_t payload_wire
        int32_t ifindex
        uint16_t hatype
        uint16_t sport
        uint16_t dport
        uint8_t family
        uint8_t proto
        uint8_t pkttype
        uint8_t tcp_flags
        uint32_t seq
        uint32_t ack
        uint32_t vni
        uint16_t window
        uint16_t vlan
        uint8_t vxlan
        uint8_t wscale
        uint8_t smac[6]
        uint8_t dmac[6]

    struct dk_dns_msg:
        uint64_t ts_ns
        uint8_t saddr[16]
        uint8_t daddr[16]
        int32_t ifindex
        uint32_t answers_off
        uint16_t answers_n
        uint16_t hatype
        uint16_t sport
        uint16_t dport
        uint16_t id
        uint16_t qtype
        uint16_t qname_len
        uint8_t family
        uint8_t proto
        uint8_t pkttype
        uint8_t qr
        uint8_t opcode
        uint8_t rcode
        uint8_t qname[256]

    struct dk_dns_addr:
        uint32_t msg
        uint32_t ttl
        uint8_t family
        uint8_t addr[16]

    struct dk_dns_pair:
        uint64_t ts_ns
        uint64_t latency_ns
        uint8_t caddr[16]
        uint8_t saddr[16]
        uint16_t cport
        uint16_t sport
        uint16_t qtype
        uint16_t qname_len
        uint16_t id
        int16_t rcode
        uint8_t family
        uint8_t proto
        uint8_t qname[256]


# A consumer of decoded packets called by the packet ring's decoder without
# the GIL (dkebpf._packets.ring_fold): n PKT_DTYPE rows and the payload
# buffer their payload_off index, valid during the call only.
ctypedef void (*dk_pkt_sink)(void *ctx, const dk_pkt *pkts, Py_ssize_t n, const uint8_t *payload,
                             Py_ssize_t payload_len) noexcept nogil

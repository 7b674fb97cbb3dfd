# C-level interface of dkebpf._packets (ext/packets.pyx), for other Cython
# modules (bpf-netlog decodes the packets it captures with the same code):
#     from dkebpf._packets cimport decode_network, DECODED
# Reached through the module's C-API capsules: dkebpf._packets must be
# importable at run time.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from dk_packet cimport dk_pkt

cdef enum:  # decode_network() results
    DECODED = 0
    NOT_IP = -1          # neither IPv4 nor IPv6, or a bad version/header length
    NOT_TCP_UDP = -2     # another transport, or IPv6 extension headers
    FRAGMENT = -3        # a non-first IPv4 fragment: no transport header
    TRUNCATED = -4       # headers cut by the capture length

# IPv4/IPv6 then UDP/TCP headers at p (n captured bytes, ethertype from the
# link layer) -> addresses, ports, protocol and payload sizes in out; *l4_off
# is where the transport payload starts. Never reads past p + n.
cdef int decode_network(const uint8_t *p, uint32_t n, uint16_t ethertype, dk_pkt *out,
                        uint32_t *l4_off) noexcept nogil

# An Ethernet frame at f (n captured bytes): MACs, up to two VLAN tags,
# decode_network(); with decap_vxlan the packet inside VXLAN (UDP 4789 or
# 8472) instead of the tunnel's. *l4_off is relative to f.
cdef int decode_link(const uint8_t *f, uint32_t n, bint decap_vxlan, dk_pkt *out,
                     uint32_t *l4_off) noexcept nogil

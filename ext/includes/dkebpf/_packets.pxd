# C-level interface of dkebpf._packets (ext/packets.pyx), for other Cython
# modules (bpf-netlog decodes the packets it captures with the same code):
#     from dkebpf._packets cimport decode_frame, decode_network, DECODED
# Reached through the module's C-API capsules: dkebpf._packets must be
# importable at run time.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from dk_packet cimport dk_pkt, dk_pkt_sink

cdef enum:  # decode_network() results
    DECODED = 0
    NOT_IP = -1          # neither IPv4 nor IPv6, or a bad version/header length
    NOT_TCP_UDP = -2     # another transport (also ESP, or more than 8 IPv6 extension headers)
    FRAGMENT = -3        # a non-first IPv4 or IPv6 fragment: no transport header
    TRUNCATED = -4       # headers cut by the capture length

# IPv4/IPv6 (extension headers followed) then UDP/TCP headers at p (n
# captured bytes, ethertype from the link layer) -> addresses, ports,
# protocol, payload sizes and TCP seq/ack/window in out; *l4_off is where
# the transport payload starts. Never reads past p + n.
cdef int decode_network(const uint8_t *p, uint32_t n, uint16_t ethertype, dk_pkt *out,
                        uint32_t *l4_off) noexcept nogil

# A captured frame: Ethernet and up to two VLAN tags when hatype is
# ARPHRD_ETHER (else the network header at net_off, of type link_proto),
# then decode_network; VXLAN (UDP 4789/8472, I flag) is opened and out holds
# the inner packet with vxlan = 1 and vni. *l4_off is relative to p.
cdef int decode_frame(const uint8_t *p, uint32_t n, uint16_t hatype, uint32_t net_off,
                      uint16_t link_proto, dk_pkt *out, uint32_t *l4_off) noexcept nogil

# The spilled blocks of a spilling PacketRing (start_spill), at most
# max_blocks, decoded and handed to sink(ctx, ...) batch by batch, all
# without the GIL; the spill emptied, waits for more up to linger_ms in all
# (the spiller notifies every eighth of a ring, or 10 ms after a block):
# (blocks taken, more left). A reader that folds the packets at once takes
# the GIL once per call, not twice per batch and once per wake-up.
cdef tuple ring_fold(object ring, dk_pkt_sink sink, void *ctx, uint32_t max_blocks, uint32_t linger_ms)

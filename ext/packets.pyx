"""Packet capture: an AF_PACKET socket with a TPACKET_V3 ring and a classic
BPF filter, walked in C with the GIL released; each packet's IPv4/IPv6 and
UDP/TCP headers are decoded into a ``PKT_DTYPE`` row and its transport
payload copied into one byte buffer. No Python object per packet.

Link layer: whatever the device (ethernet, loopback, tun, a cooked
capture), the kernel tells where the network header starts (tpacket3_hdr
``tp_net``) and which protocol it carries (sockaddr_ll ``sll_protocol``),
so no link header is parsed here. Used by dnsflow; built to be reused by
bpf-netlog (one ring per network namespace and interface)."""
from libc.errno cimport errno
from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

import numpy as np
cimport numpy as cnp

from packet cimport *
from sysio cimport *
from dk_packet cimport *
from dk_common cimport offset_of, be16, be32
from dkebpf._records import _dtype
from dkebpf.errors import kernel_error

cnp.import_array()

cdef dk_pkt _p
PKT_DTYPE = _dtype("dk_pkt", [
    ("ts_ns", "<u8", offset_of(&_p, &_p.ts_ns)),
    ("saddr", "V16", offset_of(&_p, &_p.saddr)),
    ("daddr", "V16", offset_of(&_p, &_p.daddr)),
    ("payload_off", "<u4", offset_of(&_p, &_p.payload_off)),
    ("payload_len", "<u4", offset_of(&_p, &_p.payload_len)),
    ("payload_wire", "<u4", offset_of(&_p, &_p.payload_wire)),
    ("ifindex", "<i4", offset_of(&_p, &_p.ifindex)),
    ("hatype", "<u2", offset_of(&_p, &_p.hatype)),
    ("sport", "<u2", offset_of(&_p, &_p.sport)),
    ("dport", "<u2", offset_of(&_p, &_p.dport)),
    ("family", "u1", offset_of(&_p, &_p.family)),
    ("proto", "u1", offset_of(&_p, &_p.proto)),
    ("pkttype", "u1", offset_of(&_p, &_p.pkttype)),
    ("tcp_flags", "u1", offset_of(&_p, &_p.tcp_flags)),
    ("tcp_seq", "<u4", offset_of(&_p, &_p.tcp_seq)),
    ("tcp_ack", "<u4", offset_of(&_p, &_p.tcp_ack)),
    ("tcp_win", "<u2", offset_of(&_p, &_p.tcp_win)),
    ("vxlan", "u1", offset_of(&_p, &_p.vxlan)),
    ("link_ok", "u1", offset_of(&_p, &_p.link_ok)),
    ("vni", "<u4", offset_of(&_p, &_p.vni)),
    ("smac", "V6", offset_of(&_p, &_p.smac)),
    ("dmac", "V6", offset_of(&_p, &_p.dmac)),
], sizeof(dk_pkt))

PACKET_HOST_TYPE = PACKET_HOST
PACKET_OUTGOING_TYPE = PACKET_OUTGOING
ARPHRD_LOOPBACK_TYPE = ARPHRD_LOOPBACK

# decode_network() results: the module's .pxd (ext/includes/dkebpf/_packets.pxd)
DECODE_STATUS = {DECODED: "decoded", NOT_IP: "not_ip", NOT_TCP_UDP: "not_tcp_udp",
                 FRAGMENT: "fragment", TRUNCATED: "truncated"}


cdef int decode_network(const uint8_t *p, uint32_t n, uint16_t ethertype, dk_pkt *out,
                        uint32_t *l4_off) noexcept nogil:
    """IPv4/IPv6 then UDP/TCP headers at p (n captured bytes). Fills the
    addresses, ports, protocol and payload sizes of out; *l4_off is where
    the transport payload starts. Never reads past p + n."""
    cdef uint32_t ihl, tot, off, plen, doff, ulen, ext
    cdef uint8_t proto
    cdef int hops
    memset(out.saddr, 0, 16)
    memset(out.daddr, 0, 16)
    if ethertype == ETH_P_IP:
        if n < 20 or (p[0] >> 4) != 4:
            return NOT_IP
        ihl = (p[0] & 0x0F) * 4
        if ihl < 20:
            return NOT_IP
        if n < ihl:
            return TRUNCATED
        if be16(p + 6) & 0x1FFF:   # fragment offset: RFC 791
            return FRAGMENT
        tot = be16(p + 2)
        if tot < ihl:
            return NOT_IP
        # trailing link padding (short ethernet frames) is not payload
        plen = tot - ihl
        proto = p[9]
        memcpy(out.saddr, p + 12, 4)
        memcpy(out.daddr, p + 16, 4)
        out.family = 4
        off = ihl
    elif ethertype == ETH_P_IPV6:
        if n < 40 or (p[0] >> 4) != 6:
            return NOT_IP
        plen = be16(p + 4)
        proto = p[6]
        memcpy(out.saddr, p + 8, 16)
        memcpy(out.daddr, p + 24, 16)
        out.family = 6
        off = 40
        # extension headers (RFC 8200 4.1): hop-by-hop, routing, fragment,
        # destination options, AH (RFC 4302: length in 4-byte units)
        for hops in range(8):
            if proto != 0 and proto != 43 and proto != 44 and proto != 60 and proto != 51:
                break
            if n < off + 8:
                return TRUNCATED
            if proto == 44:
                ext = 8
                if be16(p + off + 2) & 0xFFF8:   # not the first fragment
                    return FRAGMENT
            elif proto == 51:
                ext = (p[off + 1] + 2) * 4
            else:
                ext = (p[off + 1] + 1) * 8
            if plen < ext:
                return TRUNCATED
            proto = p[off]
            plen -= ext
            off += ext
    else:
        return NOT_IP
    out.proto = proto
    out.tcp_flags = 0
    out.tcp_seq = 0
    out.tcp_ack = 0
    out.tcp_win = 0
    if proto == 17:
        if n < off + 8:
            return TRUNCATED
        out.sport = be16(p + off)
        out.dport = be16(p + off + 2)
        ulen = be16(p + off + 4)
        if ulen < 8:
            return TRUNCATED
        # the smaller of what UDP and IP say (a jumbogram or a lie)
        plen = plen - 8 if plen >= 8 else 0
        out.payload_wire = ulen - 8 if ulen - 8 < plen else plen
        off += 8
    elif proto == 6:
        if n < off + 20:
            return TRUNCATED
        out.sport = be16(p + off)
        out.dport = be16(p + off + 2)
        doff = (p[off + 12] >> 4) * 4
        out.tcp_flags = p[off + 13]
        out.tcp_seq = be32(p + off + 4)
        out.tcp_ack = be32(p + off + 8)
        out.tcp_win = be16(p + off + 14)
        if doff < 20 or n < off + doff or plen < doff:
            return TRUNCATED
        out.payload_wire = plen - doff
        off += doff
    else:
        return NOT_TCP_UDP
    out.payload_len = n - off if n - off < out.payload_wire else out.payload_wire
    l4_off[0] = off
    return DECODED


cdef int decode_link(const uint8_t *f, uint32_t n, bint decap_vxlan, dk_pkt *out,
                     uint32_t *l4_off) noexcept nogil:
    """An Ethernet frame at f (n captured bytes): MAC addresses, up to two
    802.1Q/802.1ad tags (QinQ) skipped, then decode_network(). With
    decap_vxlan, UDP to or from port 4789 (IANA, RFC 7348) or 8472 (Linux's
    default, flannel) carrying VXLAN is replaced by the packet inside it:
    out describes the inner packet (vxlan=1, vni) and *l4_off is relative
    to f."""
    cdef uint32_t off = 14, l4, vni
    cdef uint16_t et
    cdef int rc, tags = 0
    if n < 14:
        return NOT_IP
    et = be16(f + 12)
    while (et == 0x8100 or et == 0x88A8) and tags < 2:
        if n < off + 4:
            return TRUNCATED
        et = be16(f + off + 2)
        off += 4
        tags += 1
    rc = decode_network(f + off, n - off, et, out, &l4)
    if rc != DECODED:
        return rc
    memcpy(out.smac, f + 6, 6)
    memcpy(out.dmac, f, 6)
    out.link_ok = 1
    out.vxlan = 0
    out.vni = 0
    l4_off[0] = off + l4
    if decap_vxlan and out.proto == 17 and (out.dport == 4789 or out.dport == 8472 or
                                            out.sport == 4789 or out.sport == 8472):
        # RFC 7348 5: flags byte with the I bit, 24-bit VNI at bytes 4..6
        off = off + l4
        if out.payload_len < 8 + 14 or not (f[off] & 0x08):
            return DECODED   # plain UDP on that port
        vni = (<uint32_t>f[off + 4] << 16) | (<uint32_t>f[off + 5] << 8) | f[off + 6]
        rc = decode_link(f + off + 8, n - off - 8, False, out, &l4)
        if rc != DECODED:
            return rc
        out.vxlan = 1
        out.vni = vni
        l4_off[0] = off + 8 + l4
    return DECODED


def decode_frames(bytes data, offsets, lengths, bint decap_vxlan=True):
    """Decode Ethernet frames laid end to end in data (recorded rings, pcap
    files, tests and benchmarks): as decode_packets, through decode_link."""
    cdef Py_ssize_t n = len(offsets), i, got = 0
    cdef cnp.int64_t[:] offs = np.ascontiguousarray(offsets, dtype=np.int64)
    cdef cnp.int64_t[:] lens = np.ascontiguousarray(lengths, dtype=np.int64)
    pkts = np.zeros(n, PKT_DTYPE)
    payload = np.empty(len(data), np.uint8)
    status = np.empty(n, np.int8)
    cdef dk_pkt *out = <dk_pkt *>cnp.PyArray_DATA(pkts)
    cdef uint8_t *pay = <uint8_t *>cnp.PyArray_DATA(payload)
    cdef cnp.int8_t[:] st = status
    cdef const uint8_t *base = <const uint8_t *>data
    cdef Py_ssize_t total = len(data)
    cdef uint32_t l4, used = 0
    cdef int rc
    for i in range(n):
        if offs[i] < 0 or lens[i] < 0 or offs[i] + lens[i] > total:
            raise ValueError(f"frame {i} lies outside data")
    with nogil:
        for i in range(n):
            rc = decode_link(base + offs[i], <uint32_t>lens[i], decap_vxlan, &out[got], &l4)
            st[i] = rc
            if rc == DECODED:
                memcpy(pay + used, base + offs[i] + l4, out[got].payload_len)
                out[got].payload_off = used
                used += out[got].payload_len
                got += 1
    return pkts[:got], payload[:used], status


def decode_packets(bytes data, offsets, lengths, ethertypes):
    """Decode network-layer packets laid end to end in data (for tests and
    benchmarks; the ring does the same per frame). Returns (pkts, payload,
    status) where status[i] is DECODED or the reason packet i was not."""
    cdef Py_ssize_t n = len(offsets), i, got = 0
    cdef cnp.int64_t[:] offs = np.ascontiguousarray(offsets, dtype=np.int64)
    cdef cnp.int64_t[:] lens = np.ascontiguousarray(lengths, dtype=np.int64)
    cdef cnp.int64_t[:] eths = np.ascontiguousarray(ethertypes, dtype=np.int64)
    pkts = np.zeros(n, PKT_DTYPE)
    payload = np.empty(len(data), np.uint8)
    status = np.empty(n, np.int8)
    cdef dk_pkt *out = <dk_pkt *>cnp.PyArray_DATA(pkts)
    cdef uint8_t *pay = <uint8_t *>cnp.PyArray_DATA(payload)
    cdef cnp.int8_t[:] st = status
    cdef const uint8_t *base = <const uint8_t *>data
    cdef Py_ssize_t total = len(data)
    cdef uint32_t l4, used = 0
    cdef int rc
    for i in range(n):
        if offs[i] < 0 or lens[i] < 0 or offs[i] + lens[i] > total:
            raise ValueError(f"packet {i} lies outside data")
    with nogil:
        for i in range(n):
            rc = decode_network(base + offs[i], <uint32_t>lens[i], <uint16_t>eths[i], &out[got], &l4)
            st[i] = rc
            if rc == DECODED:
                memcpy(pay + used, base + offs[i] + l4, out[got].payload_len)
                out[got].payload_off = used
                used += out[got].payload_len
                got += 1
    return pkts[:got], payload[:used], status


cdef class PacketRing:
    """An AF_PACKET socket receiving what ``filter_code`` (classic BPF,
    packed ``struct sock_filter`` array) accepts, on every interface of the
    caller's network namespace (or only on ``ifindex``), through a
    TPACKET_V3 ring of block_nr blocks of block_size bytes. Ethernet frames
    are decoded from their link header (MACs, VLAN tags; VXLAN with
    ``decap_vxlan``), other devices from the network header. fileno() is readable when a block is
    ready; read() copies ready blocks into numpy and hands them back to
    the kernel at once."""
    cdef int fd
    cdef uint8_t *ring
    cdef size_t ring_len
    cdef uint32_t block_size, block_nr, cur
    cdef readonly uint64_t packets, bytes_copied, not_ip, not_tcp_udp, fragments, truncated
    cdef readonly uint64_t kernel_packets, kernel_drops, kernel_freezes
    cdef readonly int ifindex
    cdef bint decap_vxlan

    def __cinit__(self, bytes filter_code, uint32_t block_size=1 << 18, uint32_t block_nr=16,
                  uint32_t retire_ms=100, int ifindex=0, bint decap_vxlan=False):
        self.fd = -1
        self.ring = NULL
        self.cur = 0
        self.block_size = block_size
        self.block_nr = block_nr
        self.ifindex = ifindex
        self.decap_vxlan = decap_vxlan
        if len(filter_code) == 0 or len(filter_code) % 8 or len(filter_code) // 8 > 4096:
            raise ValueError("filter_code must be 1..4096 packed struct sock_filter (8 bytes each)")
        cdef sock_fprog prog
        cdef tpacket_req3 req
        cdef int version = TPACKET_V3
        cdef sockaddr_ll sll
        # protocol 0: the socket receives nothing until bind(), so no
        # packet gets in before the filter is attached
        self.fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)
        if self.fd < 0:
            self._fail("socket(AF_PACKET, SOCK_RAW)")
        prog.len = len(filter_code) // 8
        prog.filter = <sock_filter *><const char *>filter_code
        if setsockopt(self.fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0:
            self._fail("SO_ATTACH_FILTER")
        if setsockopt(self.fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) < 0:
            self._fail("PACKET_VERSION TPACKET_V3")
        memset(&req, 0, sizeof(req))
        req.tp_block_size = block_size
        req.tp_block_nr = block_nr
        req.tp_frame_size = 2048   # V3 frames are variable; the kernel wants a divisor of the block
        req.tp_frame_nr = (block_size // 2048) * block_nr
        req.tp_retire_blk_tov = retire_ms   # hand over a partly filled block after this long
        if setsockopt(self.fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0:
            self._fail(f"PACKET_RX_RING ({block_nr} blocks of {block_size} bytes)")
        self.ring_len = <size_t>block_size * block_nr
        cdef void *m = mmap(NULL, self.ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, self.fd, 0)
        if m == MAP_FAILED:
            self._fail("mmap of the packet ring")
        self.ring = <uint8_t *>m
        memset(&sll, 0, sizeof(sll))
        sll.sll_family = AF_PACKET
        sll.sll_protocol = htons(ETH_P_ALL)
        sll.sll_ifindex = ifindex   # 0: every interface
        if bind(self.fd, <sockaddr *>&sll, sizeof(sll)) < 0:
            self._fail("bind(AF_PACKET, ETH_P_ALL)")

    cdef _fail(self, what):
        err = errno
        self.close()
        raise kernel_error(f"packet socket: {what}", err)

    def fileno(self):
        return self.fd

    def close(self):
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, uint32_t max_blocks=8):
        """Copy up to max_blocks ready blocks: returns (pkts, payload, more)
        with ``more`` true when further blocks may be waiting."""
        if self.ring == NULL:
            raise RuntimeError("packet ring used after close()")
        # a block holds at most block_size / 48 frames (tpacket3_hdr +
        # sockaddr_ll, aligned, is more than that)
        cdef Py_ssize_t cap_pkts = (self.block_size // 48 + 1) * max_blocks
        pkts = np.empty(cap_pkts, PKT_DTYPE)
        payload = np.empty(<Py_ssize_t>self.block_size * max_blocks, np.uint8)
        cdef dk_pkt *out = <dk_pkt *>cnp.PyArray_DATA(pkts)
        cdef uint8_t *pay = <uint8_t *>cnp.PyArray_DATA(payload)
        cdef Py_ssize_t got = 0
        cdef uint32_t used = 0, blocks = 0, i, num, l4, hdr_off
        cdef tpacket_block_desc *bd
        cdef tpacket3_hdr *h
        cdef sockaddr_ll *sll
        cdef uint8_t *frame
        cdef int rc
        cdef size_t sll_off = TPACKET_ALIGN(sizeof(tpacket3_hdr))
        with nogil:
            while blocks < max_blocks:
                bd = <tpacket_block_desc *>(self.ring + <size_t>self.cur * self.block_size)
                if not (bd.hdr.bh1.block_status & TP_STATUS_USER):
                    break
                __sync_synchronize()
                num = bd.hdr.bh1.num_pkts
                hdr_off = bd.hdr.bh1.offset_to_first_pkt
                for i in range(num):
                    if hdr_off + sizeof(tpacket3_hdr) > self.block_size:
                        break   # a corrupt block: never read outside it
                    frame = <uint8_t *>bd + hdr_off
                    h = <tpacket3_hdr *>frame
                    sll = <sockaddr_ll *>(frame + sll_off)
                    self.packets += 1
                    if h.tp_snaplen < h.tp_len:
                        self.truncated += 1
                    if h.tp_net >= h.tp_mac and <uint32_t>(h.tp_net - h.tp_mac) <= h.tp_snaplen and \
                            hdr_off + h.tp_mac + h.tp_snaplen <= self.block_size:
                        if sll.sll_hatype == ARPHRD_ETHER:
                            rc = decode_link(frame + h.tp_mac, h.tp_snaplen, self.decap_vxlan, &out[got], &l4)
                        else:
                            out[got].link_ok = 0
                            out[got].vxlan = 0
                            out[got].vni = 0
                            rc = decode_network(frame + h.tp_net, h.tp_snaplen - <uint32_t>(h.tp_net - h.tp_mac),
                                                ntohs(sll.sll_protocol), &out[got], &l4)
                            l4 += <uint32_t>(h.tp_net - h.tp_mac)   # from the frame's start, as decode_link
                    else:
                        rc = NOT_IP
                    if rc == DECODED:
                        out[got].ts_ns = <uint64_t>h.tp_sec * 1000000000 + h.tp_nsec
                        out[got].ifindex = sll.sll_ifindex
                        out[got].hatype = sll.sll_hatype
                        out[got].pkttype = sll.sll_pkttype
                        out[got].payload_off = used
                        memcpy(pay + used, frame + h.tp_mac + l4, out[got].payload_len)
                        used += out[got].payload_len
                        self.bytes_copied += out[got].payload_len
                        got += 1
                    elif rc == NOT_IP:
                        self.not_ip += 1
                    elif rc == NOT_TCP_UDP:
                        self.not_tcp_udp += 1
                    elif rc == FRAGMENT:
                        self.fragments += 1
                    else:
                        self.truncated += 1
                    if h.tp_next_offset == 0:
                        break
                    hdr_off += h.tp_next_offset
                __sync_synchronize()
                bd.hdr.bh1.block_status = TP_STATUS_KERNEL
                self.cur = (self.cur + 1) % self.block_nr
                blocks += 1
        return pkts[:got], payload[:used], blocks == max_blocks

    def wait(self, int timeout_ms):
        """Block up to timeout_ms until a block is ready (tests, tools)."""
        cdef pollfd p
        p.fd = self.fd
        p.events = POLLIN
        with nogil:
            rc = poll(&p, 1, timeout_ms)
        return rc > 0

    def counters(self):
        """Totals since open; the kernel's own counters (PACKET_STATISTICS
        resets on read, so they are accumulated here)."""
        cdef tpacket_stats_v3 st
        cdef socklen_t ln = sizeof(st)
        if self.fd >= 0 and getsockopt(self.fd, SOL_PACKET, PACKET_STATISTICS, &st, &ln) == 0:
            self.kernel_packets += st.tp_packets
            self.kernel_drops += st.tp_drops
            self.kernel_freezes += st.tp_freeze_q_cnt
        return {"packets": self.packets, "payload_bytes": self.bytes_copied,
                "not_ip": self.not_ip, "not_tcp_udp": self.not_tcp_udp,
                "fragments": self.fragments, "truncated": self.truncated,
                "kernel_packets": self.kernel_packets, "kernel_drops": self.kernel_drops,
                "kernel_queue_freezes": self.kernel_freezes}

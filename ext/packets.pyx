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
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME

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
    ("seq", "<u4", offset_of(&_p, &_p.seq)),
    ("ack", "<u4", offset_of(&_p, &_p.ack)),
    ("vni", "<u4", offset_of(&_p, &_p.vni)),
    ("window", "<u2", offset_of(&_p, &_p.window)),
    ("vlan", "<u2", offset_of(&_p, &_p.vlan)),
    ("vxlan", "u1", offset_of(&_p, &_p.vxlan)),
    ("wscale", "u1", offset_of(&_p, &_p.wscale)),
    ("smac", "V6", offset_of(&_p, &_p.smac)),
    ("dmac", "V6", offset_of(&_p, &_p.dmac)),
], sizeof(dk_pkt))

PACKET_HOST_TYPE = PACKET_HOST
PACKET_OUTGOING_TYPE = PACKET_OUTGOING
ARPHRD_LOOPBACK_TYPE = ARPHRD_LOOPBACK

# decode_network() results: the module's .pxd (ext/includes/dkebpf/_packets.pxd)
DECODE_STATUS = {DECODED: "decoded", NOT_IP: "not_ip", NOT_TCP_UDP: "not_tcp_udp",
                 FRAGMENT: "fragment", TRUNCATED: "truncated"}


cdef enum:
    IPV6_EXTENSIONS_MAX = 8   # more is an attack or a bug, not traffic


cdef int skip_ipv6_extensions(const uint8_t *p, uint32_t n, uint8_t *proto, uint32_t *off,
                              uint32_t *plen) noexcept nogil:
    """Walk the IPv6 extension headers after the fixed header (RFC 8200
    4.1-4.6; AH's length is in 4-byte units, RFC 4302): *proto becomes the
    transport's, *off where its header starts, *plen what is left of the
    payload. A fragment header with a non-zero offset means no transport
    header follows."""
    cdef uint32_t hlen
    cdef int i
    for i in range(IPV6_EXTENSIONS_MAX + 1):
        if proto[0] not in (0, 43, 44, 51, 60, 135, 139, 140):
            return DECODED
        if i == IPV6_EXTENSIONS_MAX or n < off[0] + 2:
            return NOT_TCP_UDP if i == IPV6_EXTENSIONS_MAX else TRUNCATED
        if proto[0] == 44:                            # fragment
            if n < off[0] + 8:
                return TRUNCATED
            if be16(p + off[0] + 2) & 0xFFF8:
                return FRAGMENT
            hlen = 8
        elif proto[0] == 51:                          # authentication header
            hlen = (<uint32_t>p[off[0] + 1] + 2) * 4
        else:   # hop-by-hop, routing, destination options, mobility, HIP, shim6
            hlen = (<uint32_t>p[off[0] + 1] + 1) * 8
        if n < off[0] + hlen or plen[0] < hlen:
            return TRUNCATED
        proto[0] = p[off[0]]
        off[0] += hlen
        plen[0] -= hlen
    return NOT_TCP_UDP


cdef uint8_t _tcp_wscale(const uint8_t *o, uint32_t n) noexcept nogil:
    """The window scale shift in the TCP options o[0:n] (kind 3, length 3;
    RFC 7323 2.2-2.3: a shift over 14 is used as 14), DK_NO_WSCALE when
    absent or when the options are malformed."""
    cdef uint32_t i = 0
    while i < n:
        if o[i] == 0:          # end of options
            break
        if o[i] == 1:          # no-op
            i += 1
            continue
        if i + 1 >= n or o[i + 1] < 2 or i + o[i + 1] > n:
            break
        if o[i] == 3 and o[i + 1] == 3:
            return o[i + 2] if o[i + 2] <= 14 else 14
        i += o[i + 1]
    return DK_NO_WSCALE


cdef int decode_network(const uint8_t *p, uint32_t n, uint16_t ethertype, dk_pkt *out,
                        uint32_t *l4_off) noexcept nogil:
    """IPv4/IPv6 then UDP/TCP headers at p (n captured bytes). Fills the
    addresses, ports, protocol and payload sizes of out; *l4_off is where
    the transport payload starts. Never reads past p + n."""
    cdef uint32_t ihl, tot, off, plen, doff, ulen
    cdef uint8_t proto
    cdef int rc
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
        rc = skip_ipv6_extensions(p, n, &proto, &off, &plen)
        if rc != DECODED:
            return rc
    else:
        return NOT_IP
    out.proto = proto
    out.tcp_flags = 0
    out.seq = out.ack = out.vni = 0
    out.window = out.vlan = out.vxlan = 0
    out.wscale = DK_NO_WSCALE
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
        out.seq = be32(p + off + 4)
        out.ack = be32(p + off + 8)
        out.window = be16(p + off + 14)
        if doff < 20 or n < off + doff or plen < doff:
            return TRUNCATED
        if out.tcp_flags & 0x02:   # SYN: its options may carry the window scale
            out.wscale = _tcp_wscale(p + off + 20, doff - 20)
        out.payload_wire = plen - doff
        off += doff
    else:
        return NOT_TCP_UDP
    out.payload_len = n - off if n - off < out.payload_wire else out.payload_wire
    l4_off[0] = off
    return DECODED


cdef enum:
    VLAN_TAGS_MAX = 2   # 802.1ad + 802.1Q (QinQ)
    VXLAN_PORT = 4789   # IANA (RFC 7348)
    VXLAN_PORT_LINUX = 8472   # Linux's historical default, flannel's
VXLAN_PORTS = (VXLAN_PORT, VXLAN_PORT_LINUX)   # also the socket program's (netlog.filter_cbpf)


cdef int _ethernet(const uint8_t *p, uint32_t n, uint32_t *off, uint16_t *ethertype,
                   uint16_t *vlan) noexcept nogil:
    """The Ethernet header and up to two VLAN tags: where the network
    header starts, its type, and the outermost VLAN id (0: none)."""
    cdef int i
    if n < 14:
        return TRUNCATED
    ethertype[0] = be16(p + 12)
    off[0] = 14
    vlan[0] = 0
    for i in range(VLAN_TAGS_MAX):
        if ethertype[0] != ETH_P_8021Q and ethertype[0] != ETH_P_8021AD:
            break   # 0x9100 (pre-802.1ad QinQ) is not a tag to the kernel either
        if n < off[0] + 4:
            return TRUNCATED
        if i == 0:
            vlan[0] = be16(p + off[0]) & 0x0FFF
        ethertype[0] = be16(p + off[0] + 2)
        off[0] += 4
    return DECODED


cdef int decode_frame(const uint8_t *p, uint32_t n, uint16_t hatype, uint32_t net_off,
                      uint16_t link_proto, dk_pkt *out, uint32_t *l4_off) noexcept nogil:
    """A captured frame of n bytes at p: Ethernet with its VLAN tags when
    the device's hatype is ARPHRD_ETHER, else the network header at net_off
    with link_proto as its type (tun, cooked, ...). A UDP datagram from or
    to the VXLAN ports with the I flag (RFC 7348 5) is opened and the inner
    Ethernet frame decoded in its place: out then holds the inner packet,
    vxlan = 1 and vni. *l4_off is relative to p."""
    cdef uint32_t off, inner, inner_off, end
    cdef uint16_t ethertype, vlan, inner_vlan
    cdef uint32_t vni
    cdef int rc
    if hatype == ARPHRD_ETHER:
        rc = _ethernet(p, n, &off, &ethertype, &vlan)
        if rc != DECODED:
            return rc
        memcpy(out.dmac, p, 6)
        memcpy(out.smac, p + 6, 6)
    else:
        if net_off > n:
            return TRUNCATED
        off, ethertype, vlan = net_off, link_proto, 0
        memset(out.smac, 0, 6)
        memset(out.dmac, 0, 6)
    rc = decode_network(p + off, n - off, ethertype, out, l4_off)
    if rc != DECODED:
        return rc
    l4_off[0] += off
    out.vlan = vlan
    if out.proto != 17 or out.payload_len < 8 or not (p[l4_off[0]] & 0x08) or not (
            out.sport == VXLAN_PORT or out.dport == VXLAN_PORT or
            out.sport == VXLAN_PORT_LINUX or out.dport == VXLAN_PORT_LINUX):
        return DECODED
    vni = be32(p + l4_off[0] + 4) >> 8
    end = l4_off[0] + out.payload_len   # the inner frame ends with the datagram
    inner = l4_off[0] + 8
    rc = _ethernet(p + inner, end - inner, &inner_off, &ethertype, &inner_vlan)
    if rc != DECODED:
        return rc
    rc = decode_network(p + inner + inner_off, end - inner - inner_off, ethertype, out, l4_off)
    if rc != DECODED:
        return rc
    memcpy(out.dmac, p + inner, 6)   # the inner frame's, as its addresses
    memcpy(out.smac, p + inner + 6, 6)
    inner += inner_off
    l4_off[0] += inner
    out.vlan = vlan
    out.vni = vni
    out.vxlan = 1
    return DECODED


def decode_packets(bytes data, offsets, lengths, ethertypes):
    """Decode network-layer packets laid end to end in data (for tests and
    benchmarks; the ring does the same per frame). Returns (pkts, payload,
    status) where status[i] is DECODED or the reason packet i was not."""
    n = len(offsets)
    return _decode_batch(data, offsets, lengths, np.zeros(n), np.zeros(n), ethertypes, False)


def decode_frames(bytes data, offsets, lengths, hatypes, net_offsets=None, link_protos=None):
    """decode_frame over frames laid end to end in data (tests, benchmarks);
    net_offsets and link_protos matter for devices that are not Ethernet.
    Returns (pkts, payload, status) as decode_packets does."""
    n = len(offsets)
    return _decode_batch(data, offsets, lengths, hatypes,
                         np.zeros(n) if net_offsets is None else net_offsets,
                         np.zeros(n) if link_protos is None else link_protos, True)


def _decode_batch(bytes data, offsets, lengths, hatypes, net_offsets, link_protos, bint frames):
    cdef Py_ssize_t n = len(offsets), i, got = 0
    cdef cnp.int64_t[:] offs = np.ascontiguousarray(offsets, dtype=np.int64)
    cdef cnp.int64_t[:] lens = np.ascontiguousarray(lengths, dtype=np.int64)
    cdef cnp.int64_t[:] hats = np.ascontiguousarray(hatypes, dtype=np.int64)
    cdef cnp.int64_t[:] nets = np.ascontiguousarray(net_offsets, dtype=np.int64)
    cdef cnp.int64_t[:] links = np.ascontiguousarray(link_protos, dtype=np.int64)
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
        if offs[i] < 0 or lens[i] < 0 or offs[i] + lens[i] > total or nets[i] < 0:
            raise ValueError(f"packet {i} lies outside data")
    with nogil:
        for i in range(n):
            if frames:
                rc = decode_frame(base + offs[i], <uint32_t>lens[i], <uint16_t>hats[i],
                                  <uint32_t>nets[i], <uint16_t>links[i], &out[got], &l4)
            else:
                rc = decode_network(base + offs[i], <uint32_t>lens[i], <uint16_t>links[i], &out[got], &l4)
            st[i] = rc
            if rc == DECODED:
                memcpy(pay + used, base + offs[i] + l4, out[got].payload_len)
                out[got].payload_off = used
                used += out[got].payload_len
                got += 1
    return pkts[:got], payload[:used], status


cdef struct Spill:
    # a ring's spiller thread and what it shares with the reader: blocks
    # [tail, head) are copies of ring blocks not decoded yet, block seq in
    # slot order[seq % nslots] (head and order written by the spiller only,
    # tail by the reader only)
    int fd, notify_fd, stop_fd
    uint8_t *ring
    uint32_t block_size, block_nr, cur
    uint8_t *slots   # mmap'd (anonymous): a released slot's pages go back to the kernel
    uint32_t *order
    uint64_t nslots, notify_blocks, poll_ms
    uint64_t head, tail, used, stop, error
    # the spiller's own: a bitmap of free slots (it takes the lowest, so
    # that light traffic reuses the first few and leaves the rest
    # untouched), of slots touched and not released, the seqs below
    # `reclaimed` whose slots it has freed, slots [0, hot) never released
    uint64_t *free_bits
    uint64_t *touched_bits
    uint64_t nwords, reclaimed, hot, touched_cold
    # slots touched and not released (a gauge, read by counters()), bytes released
    uint64_t touched, released
    # the spiller's counters: its worst lag, bytes held at most, packets of
    # the blocks dropped because the spill was full, socket errors
    uint64_t max_lag_ns, peak, drops, errors


cdef void _note_lag(tpacket_block_desc *bd, uint64_t *max_lag) noexcept nogil:
    cdef timespec now
    cdef int64_t lag
    clock_gettime(CLOCK_REALTIME, &now)   # packet times are CLOCK_REALTIME
    lag = (now.tv_sec - <int64_t>bd.hdr.bh1.ts_last_pkt.ts_sec) * 1000000000 + \
        now.tv_nsec - <int64_t>bd.hdr.bh1.ts_last_pkt.ts_nsec
    if lag > 0 and <uint64_t>lag > max_lag[0]:
        max_lag[0] = lag


cdef inline uint32_t _blk_len(tpacket_block_desc *bd, uint32_t block_size) noexcept nogil:
    cdef uint32_t n = bd.hdr.bh1.blk_len   # the header included
    return block_size if n == 0 or n > block_size else n


cdef void _notify(Spill *s) noexcept nogil:
    cdef uint64_t one = 1
    write(s.notify_fd, &one, 8)


cdef void _free_spill(Spill *s) noexcept nogil:
    if s.notify_fd >= 0:
        close(s.notify_fd)
    if s.stop_fd >= 0:
        close(s.stop_fd)
    if s.slots != NULL:
        munmap(s.slots, s.nslots * s.block_size)
    free(s.order)
    free(s.free_bits)
    free(s.touched_bits)
    free(s)


cdef void _reclaim(Spill *s, uint64_t tail) noexcept nogil:
    """Free the slots of the blocks the reader decoded (seqs below its tail)."""
    cdef uint64_t slot
    while s.reclaimed < tail:
        slot = s.order[s.reclaimed % s.nslots]
        s.free_bits[slot >> 6] |= 1ULL << (slot & 63)
        s.reclaimed += 1


cdef uint64_t _take_slot(Spill *s) noexcept nogil:
    """The lowest free slot, taken (the caller made sure one is free)."""
    cdef uint64_t w = 0, slot, bit
    while s.free_bits[w] == 0:
        w += 1
    slot = (w << 6) + <uint64_t>__builtin_ctzll(s.free_bits[w])
    bit = 1ULL << (slot & 63)
    s.free_bits[w] &= ~bit
    if not (s.touched_bits[w] & bit):
        s.touched_bits[w] |= bit
        __atomic_store_n(&s.touched, s.touched + 1, __ATOMIC_RELAXED)
        if slot >= s.hot:
            s.touched_cold += 1
    return slot


cdef void _release(Spill *s, uint64_t first) noexcept nogil:
    """The spill empty: hand the pages of the touched slots from first on
    back to the kernel (they read as zeros when touched again): from the
    hot region's end once a burst is drained, so that a burst does not
    leave its memory resident for ever; from 0 once no block came for
    IDLE_RELEASE_MS, so that an idle socket holds none."""
    cdef uint64_t slot, w, n = 0
    for slot in range(first, s.nslots):
        w = slot >> 6
        if s.touched_bits[w] & (1ULL << (slot & 63)):
            madvise(s.slots + slot * s.block_size, s.block_size, MADV_DONTNEED)
            s.touched_bits[w] &= ~(1ULL << (slot & 63))
            n += 1
    s.touched_cold = 0
    __atomic_store_n(&s.touched, s.touched - n, __ATOMIC_RELAXED)
    __atomic_store_n(&s.released, s.released + n * s.block_size, __ATOMIC_RELAXED)


# how often an idle spiller looks whether the reader emptied the spill
# (its slots beyond the hot region then released); after how long without
# a block it releases the hot region too (steady traffic, a block at least
# every retire timeout, keeps it: the hot slots are reused, not faulted in
# again)
cdef enum:
    RELEASE_POLL_MS = 100
    IDLE_RELEASE_MS = 5000


cdef void *_spill_main(void *arg) noexcept nogil:
    """The spiller thread: never takes the GIL. Each block the kernel
    retires is copied into a free slot (or, the spill full, its packets
    counted in drops) and handed back at once; the reader is notified
    (notify_fd) once notify_blocks are waiting, at a block the timeout
    retired (light traffic) or when poll_ms pass without a block. Nothing
    waiting, it sleeps in poll until a block or stop_fd."""
    cdef Spill *s = <Spill *>arg
    cdef tpacket_block_desc *bd
    cdef pollfd pfd[2]
    cdef uint64_t head, tail, slot, used, waiting = 0
    cdef uint32_t n
    cdef bint light
    cdef int err, rc, timeout
    cdef socklen_t ln
    pthread_setname_np(pthread_self(), "packet-spill")   # as top and /proc show it
    pfd[0].fd = s.fd
    pfd[0].events = POLLIN
    pfd[1].fd = s.stop_fd
    pfd[1].events = POLLIN
    while not __atomic_load_n(&s.stop, __ATOMIC_ACQUIRE):
        bd = <tpacket_block_desc *>(s.ring + <size_t>s.cur * s.block_size)
        if bd.hdr.bh1.block_status & TP_STATUS_USER:
            __sync_synchronize()
            _note_lag(bd, &s.max_lag_ns)
            light = bd.hdr.bh1.block_status & TP_STATUS_BLK_TMO
            n = _blk_len(bd, s.block_size)
            head = s.head
            tail = __atomic_load_n(&s.tail, __ATOMIC_ACQUIRE)
            _reclaim(s, tail)
            if head - tail < s.nslots:   # fewer than nslots held: a slot is free
                slot = _take_slot(s)
                memcpy(s.slots + slot * s.block_size, bd, n)
                s.order[head % s.nslots] = <uint32_t>slot   # published by the release of head
                used = __atomic_add_fetch(&s.used, n, __ATOMIC_RELAXED)
                if used > s.peak:
                    s.peak = used
                __atomic_store_n(&s.head, head + 1, __ATOMIC_RELEASE)
                waiting += 1
            else:
                s.drops += bd.hdr.bh1.num_pkts
            __sync_synchronize()
            bd.hdr.bh1.block_status = TP_STATUS_KERNEL
            s.cur = (s.cur + 1) % s.block_nr
            if waiting and (waiting >= s.notify_blocks or light):
                _notify(s)
                waiting = 0
            continue
        if s.touched_cold:
            tail = __atomic_load_n(&s.tail, __ATOMIC_ACQUIRE)
            _reclaim(s, tail)
            if tail == s.head:
                _release(s, s.hot)
        # slots to release once the reader catches up: look again after RELEASE_POLL_MS; the hot
        # ones after IDLE_RELEASE_MS without a block
        timeout = <int>s.poll_ms if waiting else (RELEASE_POLL_MS if s.touched_cold else
                                                  (IDLE_RELEASE_MS if s.touched else -1))
        rc = poll(pfd, 2, timeout)
        if rc == 0 and waiting:
            _notify(s)
            waiting = 0
        elif rc == 0 and timeout == IDLE_RELEASE_MS:
            tail = __atomic_load_n(&s.tail, __ATOMIC_ACQUIRE)
            _reclaim(s, tail)
            if tail == s.head:
                _release(s, 0)
        elif rc > 0 and pfd[0].revents & POLLERR:
            # left set, the error keeps the socket readable: read (cleared) here, handed to take_error()
            err = 0
            ln = sizeof(err)
            if getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &ln) == 0 and err:
                __atomic_store_n(&s.error, err, __ATOMIC_RELEASE)
                s.errors += 1
                _notify(s)
    return NULL


cdef class PacketRing:
    """An AF_PACKET socket receiving what ``filter_code`` (classic BPF,
    packed ``struct sock_filter`` array) accepts, on interface ``ifindex``
    (0: every interface) of the caller's network namespace, through a
    TPACKET_V3 ring of block_nr blocks of block_size bytes. fileno() is
    readable when a block is ready; read() decodes ready blocks
    (decode_frame) into numpy and hands them back to the kernel at once.
    start_spill(): a thread of the ring's own empties it without the GIL
    and read() decodes what it spilled.

    bulk_cut_room: the filter cuts some TCP segments on purpose after their
    headers plus at most this many bytes (bpf-netlog's bulk cut,
    dkebpf.packetfilter.netlog_keep); a frame cut so is counted in
    ``cut_bulk_segments``, not in ``truncated`` (0: every cut frame is
    truncated).

    ignore_outgoing: PACKET_IGNORE_OUTGOING (Linux >= 4.20), the socket
    gets received packets only: the kernel skips it before it clones a
    transmitted packet, so an unbound socket no longer costs every packet
    sent on every device a clone (KernelError ENOPROTOOPT on an older
    kernel)."""
    cdef int fd
    cdef uint8_t *ring
    cdef size_t ring_len
    cdef readonly uint32_t block_nr
    cdef uint32_t block_size, cur
    cdef readonly uint64_t packets, bytes_copied, not_ip, not_tcp_udp, fragments, truncated
    cdef readonly uint64_t cut_bulk_segments
    cdef uint32_t bulk_cut_room
    cdef readonly uint64_t kernel_packets, kernel_drops, kernel_freezes
    # blocks handed back to the kernel (a reader's budget per drain); errors
    # the socket reported (take_error: ENETDOWN when the interface went down)
    cdef readonly uint64_t blocks, socket_errors
    # the reader's worst lag: how long after the kernel closed a block
    # (its last packet's time) read() took it; the ring must hold that
    # long's packets, or it drops (the budget for block_nr x block_size)
    cdef readonly uint64_t max_lag_ns
    # read()'s output, allocated at the first read and reused: a fresh
    # multi-MiB numpy buffer per read is an mmap, a page fault per 4 KiB
    # touched and a munmap (measured: most of bpf-netlog's cost per packet)
    cdef object _pkts, _payload
    cdef uint32_t _max_blocks
    # start_spill(): the spiller thread owns the ring, read() takes the spill
    cdef Spill *sp
    cdef pthread_t spiller
    cdef readonly uint64_t spill_bytes_peak, spill_drops, spill_released_bytes   # of a spill stopped (close): counters() adds the live one

    def __cinit__(self, bytes filter_code, uint32_t block_size=1 << 18, uint32_t block_nr=16,
                  uint32_t retire_ms=100, int ifindex=0, uint32_t bulk_cut_room=0, bint ignore_outgoing=False):
        self.fd = -1
        self.sp = NULL
        self.bulk_cut_room = bulk_cut_room
        self.ring = NULL
        self.cur = 0
        self.block_size = block_size
        self.block_nr = block_nr
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
        cdef int one = 1
        if ignore_outgoing and setsockopt(self.fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0:
            self._fail("PACKET_IGNORE_OUTGOING")
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
        sll.sll_ifindex = ifindex
        if bind(self.fd, <sockaddr *>&sll, sizeof(sll)) < 0:
            self._fail("bind(AF_PACKET, ETH_P_ALL)")

    cdef _fail(self, what):
        err = errno
        self.close()
        raise kernel_error(f"packet socket: {what}", err)

    def start_spill(self, uint32_t spill_blocks=0, uint32_t notify_blocks=0, uint32_t poll_ms=10):
        """Empty the ring from a thread of its own that never takes the
        GIL (a Python thread waits for it while another holds it, and the
        ring fills): each block the kernel retires is copied into a spill
        of spill_blocks blocks (0: twice the ring; anonymous memory, each
        block in the lowest free slot, so only as much is touched as a
        backlog reached, and what a burst touched beyond twice the ring
        or 16 MiB released once the spill is empty, the rest once no block
        came for IDLE_RELEASE_MS: spill_touched_bytes,
        spill_released_bytes) and handed back at once; read() then decodes from the spill,
        and fileno() is readable once notify_blocks (0: an eighth of the
        ring) are waiting, at a block the timeout retired or after poll_ms
        without one. The spill full, a block is dropped and its packets
        counted (spill_drops). The thread inherits the caller's scheduling
        (policy, priority, nice)."""
        if self.ring == NULL:
            raise RuntimeError("packet ring used after close()")
        if self.sp != NULL:
            raise RuntimeError("the packet ring is already spilling")
        cdef uint64_t i
        cdef Spill *s = <Spill *>calloc(1, sizeof(Spill))
        if s == NULL:
            raise MemoryError("packet ring spill")
        s.nslots = spill_blocks or 2 * self.block_nr
        s.notify_blocks = notify_blocks or max(1, self.block_nr // 8)
        s.poll_ms = poll_ms
        s.block_size = self.block_size
        # the slots the spill keeps however long idle: twice the ring, at most 16 MiB
        s.hot = min(s.nslots, 2 * self.block_nr, max(1, (16 << 20) // self.block_size))
        s.nwords = (s.nslots + 63) // 64
        s.notify_fd = s.stop_fd = -1
        cdef void *m = mmap(NULL, s.nslots * self.block_size, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        s.slots = NULL if m == MAP_FAILED else <uint8_t *>m
        s.order = <uint32_t *>calloc(s.nslots, sizeof(uint32_t))
        s.free_bits = <uint64_t *>calloc(s.nwords, 8)
        s.touched_bits = <uint64_t *>calloc(s.nwords, 8)
        if s.free_bits != NULL:
            for i in range(s.nslots):
                s.free_bits[i >> 6] |= 1ULL << (i & 63)
        s.notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        s.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if s.slots == NULL or s.order == NULL or s.free_bits == NULL or s.touched_bits == NULL or \
                s.notify_fd < 0 or s.stop_fd < 0:
            err, nslots = errno, s.nslots
            _free_spill(s)
            raise kernel_error(f"packet ring spill ({nslots} blocks of {self.block_size} bytes)", err or 12)
        s.fd, s.ring, s.block_size, s.block_nr, s.cur = self.fd, self.ring, self.block_size, self.block_nr, self.cur
        cdef int rc = pthread_create(&self.spiller, NULL, _spill_main, s)
        if rc:
            _free_spill(s)
            raise kernel_error("packet ring spill: pthread_create", rc)
        self.sp = s

    @property
    def spilling(self):
        """True between start_spill() and close()."""
        return self.sp != NULL

    def fileno(self):
        """Readable when read() has something (a ready block, or spilled
        blocks once start_spill() notified) or the socket an error."""
        return self.sp.notify_fd if self.sp != NULL else self.fd

    cdef void _stop_spill(self) noexcept:
        cdef Spill *s = self.sp
        cdef uint64_t one = 1
        if s == NULL:
            return
        self.sp = NULL
        __atomic_store_n(&s.stop, 1, __ATOMIC_RELEASE)
        with nogil:
            write(s.stop_fd, &one, 8)   # wakes its poll
            pthread_join(self.spiller, NULL)
        self.max_lag_ns = max(self.max_lag_ns, s.max_lag_ns)
        self.socket_errors += s.errors
        self.spill_bytes_peak = max(self.spill_bytes_peak, s.peak)
        self.spill_drops += s.drops
        self.spill_released_bytes += s.released
        _free_spill(s)

    def close(self):
        self._stop_spill()   # before the ring it reads is unmapped
        self._pkts = self._payload = None
        self._max_blocks = 0
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

    cdef void _walk_block(self, tpacket_block_desc *bd, dk_pkt *out, uint8_t *pay, Py_ssize_t *got,
                          uint32_t *used) noexcept nogil:
        """Decode every frame of one ready block into out[*got...] and its
        payload into pay + *used (the caller made room: num_pkts rows and
        blk_len bytes)."""
        cdef uint32_t i, num = bd.hdr.bh1.num_pkts, l4, hdr_off = bd.hdr.bh1.offset_to_first_pkt
        cdef tpacket3_hdr *h
        cdef sockaddr_ll *sll
        cdef uint8_t *frame
        cdef dk_pkt *o
        cdef int rc
        cdef size_t sll_off = TPACKET_ALIGN(sizeof(tpacket3_hdr))
        for i in range(num):
            if hdr_off + sizeof(tpacket3_hdr) > self.block_size:
                break   # a corrupt block: never read outside it
            frame = <uint8_t *>bd + hdr_off
            h = <tpacket3_hdr *>frame
            sll = <sockaddr_ll *>(frame + sll_off)
            o = &out[got[0]]
            self.packets += 1
            if h.tp_net >= h.tp_mac and <uint32_t>(h.tp_net - h.tp_mac) <= h.tp_snaplen and \
                    hdr_off + h.tp_mac + h.tp_snaplen <= self.block_size:
                rc = decode_frame(frame + h.tp_mac, h.tp_snaplen, sll.sll_hatype,
                                  h.tp_net - h.tp_mac, ntohs(sll.sll_protocol), o, &l4)
                l4 += h.tp_mac
                if rc == DECODED and o.vlan == 0 and h.tp_status & TP_STATUS_VLAN_VALID:
                    o.vlan = h.hv1.tp_vlan_tci & 0x0FFF   # the tag the device took off
            else:
                rc = NOT_IP
            if h.tp_snaplen < h.tp_len and rc != TRUNCATED:   # TRUNCATED: counted below
                if rc == DECODED and o.proto == 6 and not o.vxlan and o.payload_len <= self.bulk_cut_room:
                    self.cut_bulk_segments += 1   # the filter kept only the headers, on purpose
                else:
                    self.truncated += 1
            if rc == DECODED:
                o.ts_ns = <uint64_t>h.tp_sec * 1000000000 + h.tp_nsec
                o.ifindex = sll.sll_ifindex
                o.hatype = sll.sll_hatype
                o.pkttype = sll.sll_pkttype
                o.payload_off = used[0]
                memcpy(pay + used[0], frame + l4, o.payload_len)
                used[0] += o.payload_len
                self.bytes_copied += o.payload_len
                got[0] += 1
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

    cdef Py_ssize_t _cap_pkts(self, uint32_t max_blocks) noexcept:
        # a block holds at most block_size / 48 frames (tpacket3_hdr +
        # sockaddr_ll, aligned, is more than that)
        return (self.block_size // 48 + 1) * max_blocks

    def release_buffers(self):
        """Free the decode buffers read() and ring_fold keep between calls
        (~12 MiB for 8 blocks of 512 KiB, resident as far as a batch
        filled them): a socket without traffic needs none; the next call
        allocates them again. Not while a read's copy=False views are
        still used."""
        self._pkts = self._payload = None
        self._max_blocks = 0

    cdef _buffers(self, uint32_t max_blocks):
        """The decode buffers (read()'s output) with room for max_blocks."""
        if max_blocks > self._max_blocks:
            self._pkts = np.empty(self._cap_pkts(max_blocks), PKT_DTYPE)
            self._payload = np.empty(<uint64_t>self.block_size * max_blocks, np.uint8)
            self._max_blocks = max_blocks

    cdef bint _drain_spill(self, dk_pkt_sink sink, void *ctx, uint32_t max_blocks, dk_pkt *out, uint8_t *pay,
                           Py_ssize_t cap_pkts, uint64_t cap_bytes, Py_ssize_t *got,
                           uint32_t *used, uint32_t linger_ms=0) noexcept nogil:
        """Decode spilled blocks (at most max_blocks) into out/pay, each
        slot handed back to the spiller once decoded. The batch full: with
        a sink, it is handed to sink and refilled (the rest handed over at
        the end); without, decoding stops there. With a sink and linger_ms,
        the spill emptied, wait for the spiller's next notification and go
        on, for up to linger_ms in all. Returns True when spilled blocks
        are left (fileno() then stays readable)."""
        cdef Spill *sp = self.sp
        cdef tpacket_block_desc *bd
        cdef uint64_t tail, head, cleared
        cdef uint32_t blk_len, taken = 0
        cdef bint more = False
        cdef pollfd pfd
        cdef timespec now
        cdef int64_t deadline_ns = 0, left_ms
        if linger_ms and sink != NULL:
            clock_gettime(CLOCK_MONOTONIC, &now)
            deadline_ns = now.tv_sec * 1000000000 + now.tv_nsec + <int64_t>linger_ms * 1000000
        pfd.fd = sp.notify_fd
        pfd.events = POLLIN
        read(sp.notify_fd, &cleared, 8)   # before the slots: a notification after stays
        tail = sp.tail
        head = __atomic_load_n(&sp.head, __ATOMIC_ACQUIRE)
        while True:
            if tail == head:
                if not deadline_ns:
                    break
                if got[0]:   # folded before waiting: the table is current when the caller returns
                    sink(ctx, out, got[0], pay, used[0])
                    got[0] = 0
                    used[0] = 0
                clock_gettime(CLOCK_MONOTONIC, &now)
                left_ms = (deadline_ns - now.tv_sec * 1000000000 - now.tv_nsec) // 1000000
                if left_ms <= 0 or poll(&pfd, 1, <int>left_ms) <= 0:
                    break
                read(sp.notify_fd, &cleared, 8)
                head = __atomic_load_n(&sp.head, __ATOMIC_ACQUIRE)
                continue
            if taken == max_blocks:
                more = True
                break
            bd = <tpacket_block_desc *>(sp.slots + <uint64_t>sp.order[tail % sp.nslots] * self.block_size)
            blk_len = _blk_len(bd, self.block_size)
            if got[0] + bd.hdr.bh1.num_pkts > cap_pkts or used[0] + blk_len > cap_bytes:
                if sink == NULL or got[0] == 0:
                    more = True   # no room left: the caller folds this batch first
                    break
                sink(ctx, out, got[0], pay, used[0])
                got[0] = 0
                used[0] = 0
            self._walk_block(bd, out, pay, got, used)
            __atomic_sub_fetch(&sp.used, blk_len, __ATOMIC_RELAXED)
            tail += 1
            __atomic_store_n(&sp.tail, tail, __ATOMIC_RELEASE)
            self.blocks += 1
            taken += 1
            if tail == head:
                head = __atomic_load_n(&sp.head, __ATOMIC_ACQUIRE)
        if sink != NULL and got[0]:
            sink(ctx, out, got[0], pay, used[0])
            got[0] = 0
            used[0] = 0
        if more:
            _notify(sp)   # fileno() stays readable for what is left
        return more

    def read(self, uint32_t max_blocks=8, bint copy=True, uint32_t linger_ms=0):
        """Decode ready blocks into a batch with room for max_blocks full
        blocks (more blocks of small frames fit: a block is taken while its
        frames and bytes fit what is left) and hand each back to the kernel
        at once: returns (pkts, payload, more), ``more`` true when a ready
        block did not fit. With copy=False the arrays are views of buffers
        this ring reuses: valid until the next read() (for a consumer that
        folds them at once).

        linger_ms: while the blocks come full (not handed over by the block
        timeout: the traffic is heavy), keep polling and decoding for up to
        that long, all without the GIL, so that a reader thread takes the
        GIL once per batch instead of once per block (a Python thread
        waits up to the interpreter's switch interval for it, while the
        ring fills). Spilling (start_spill), the spilled blocks are decoded
        and linger_ms is not used: the spiller thread batches."""
        if self.ring == NULL:
            raise RuntimeError("packet ring used after close()")
        if max_blocks == 0:
            raise ValueError("max_blocks must be positive")
        self._buffers(max_blocks)
        pkts = self._pkts
        payload = self._payload
        cdef Py_ssize_t cap_pkts = self._cap_pkts(max_blocks)
        cdef uint64_t cap_bytes = <uint64_t>self.block_size * max_blocks
        cdef dk_pkt *out = <dk_pkt *>cnp.PyArray_DATA(pkts)
        cdef uint8_t *pay = <uint8_t *>cnp.PyArray_DATA(payload)
        cdef Py_ssize_t got = 0
        cdef uint32_t used = 0, blk_len
        cdef bint more = False, heavy, lingering = linger_ms > 0
        cdef tpacket_block_desc *bd
        cdef pollfd pfd
        cdef timespec now
        cdef int64_t deadline_ns = 0, left_ms
        cdef Spill *sp = self.sp
        pfd.fd = self.fd
        pfd.events = POLLIN
        if sp != NULL:
            with nogil:
                more = self._drain_spill(NULL, NULL, 0xFFFFFFFF, out, pay, cap_pkts, cap_bytes, &got, &used)
        else:
            with nogil:
                if linger_ms:
                    clock_gettime(CLOCK_MONOTONIC, &now)
                    deadline_ns = now.tv_sec * 1000000000 + now.tv_nsec + <int64_t>linger_ms * 1000000
                while True:
                    bd = <tpacket_block_desc *>(self.ring + <size_t>self.cur * self.block_size)
                    if bd.hdr.bh1.block_status & TP_STATUS_USER:
                        __sync_synchronize()
                        blk_len = _blk_len(bd, self.block_size)
                        if got + bd.hdr.bh1.num_pkts > cap_pkts or used + blk_len > cap_bytes:
                            more = True   # no room left: the caller folds this batch first
                            break
                        heavy = not (bd.hdr.bh1.block_status & TP_STATUS_BLK_TMO)
                        _note_lag(bd, &self.max_lag_ns)
                        self._walk_block(bd, out, pay, &got, &used)
                        __sync_synchronize()
                        bd.hdr.bh1.block_status = TP_STATUS_KERNEL
                        self.cur = (self.cur + 1) % self.block_nr
                        self.blocks += 1
                        if not heavy:
                            lingering = False   # a block the timeout handed over: the traffic is light
                        continue
                    if not lingering:
                        break
                    clock_gettime(CLOCK_MONOTONIC, &now)
                    left_ms = (deadline_ns - now.tv_sec * 1000000000 - now.tv_nsec) // 1000000
                    # readable for an error only (take_error's case): no block to wait for
                    if left_ms <= 0 or poll(&pfd, 1, <int>left_ms) <= 0 or not (pfd.revents & POLLIN):
                        break
        if copy:
            return pkts[:got].copy(), payload[:used].copy(), more
        return pkts[:got], payload[:used], more

    def unread_since_ns(self):
        """0 when the ring holds no packet read() has not taken yet; else
        the time (CLOCK_REALTIME ns) the kernel opened the block read()
        takes next: a packet still in it, ready or being filled, is no
        older (a reader merging several rings by time waits for it).
        Not for a spilling ring."""
        if self.ring == NULL:
            raise RuntimeError("packet ring used after close()")
        if self.sp != NULL:
            raise RuntimeError("unread_since_ns: the ring is spilling")
        cdef tpacket_block_desc *bd = <tpacket_block_desc *>(self.ring + <size_t>self.cur * self.block_size)
        # num_pkts is set to 0 when the kernel opens the block, before its
        # open time is written and before any packet goes in
        if not (bd.hdr.bh1.block_status & TP_STATUS_USER) and bd.hdr.bh1.num_pkts == 0:
            return 0
        __sync_synchronize()
        return <uint64_t>bd.hdr.bh1.ts_first_pkt.ts_sec * 1000000000 + bd.hdr.bh1.ts_first_pkt.ts_nsec

    def wait(self, int timeout_ms):
        """Block up to timeout_ms until fileno() is readable (tests, tools)."""
        cdef pollfd p
        p.fd = self.fileno()
        p.events = POLLIN
        with nogil:
            rc = poll(&p, 1, timeout_ms)
        return rc > 0

    def take_error(self):
        """The error the socket holds (errno, 0 for none), cleared: an
        error keeps the socket readable (EPOLLERR) until it is read; the
        kernel sets ENETDOWN when the interface goes down and keeps the
        socket bound, so that capture resumes once it is up again."""
        cdef int err = 0
        cdef socklen_t ln = sizeof(err)
        if self.fd < 0:
            raise RuntimeError("packet ring used after close()")
        if self.sp != NULL:   # the spiller read it (counted there)
            return __atomic_exchange_n(&self.sp.error, 0, __ATOMIC_ACQUIRE)
        if getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &ln) < 0:
            raise kernel_error("packet socket: SO_ERROR", errno)
        if err:
            self.socket_errors += 1
        return err

    def counters(self):
        """Totals since open; the kernel's own counters (PACKET_STATISTICS
        resets on read, so they are accumulated here)."""
        cdef tpacket_stats_v3 st
        cdef socklen_t ln = sizeof(st)
        cdef Spill *sp = self.sp
        if self.fd >= 0 and getsockopt(self.fd, SOL_PACKET, PACKET_STATISTICS, &st, &ln) == 0:
            self.kernel_packets += st.tp_packets
            self.kernel_drops += st.tp_drops
            self.kernel_freezes += st.tp_freeze_q_cnt
        return {"packets": self.packets, "payload_bytes": self.bytes_copied,
                "not_ip": self.not_ip, "not_tcp_udp": self.not_tcp_udp,
                "fragments": self.fragments, "truncated": self.truncated,
                "cut_bulk_segments": self.cut_bulk_segments,
                "kernel_packets": self.kernel_packets, "kernel_drops": self.kernel_drops,
                "kernel_queue_freezes": self.kernel_freezes, "blocks": self.blocks,
                "reader_lag_max_ns": max(self.max_lag_ns, sp.max_lag_ns if sp else 0),
                "socket_errors": self.socket_errors + (sp.errors if sp else 0),
                "spill_bytes_peak": max(self.spill_bytes_peak, sp.peak if sp else 0),
                "spill_drops": self.spill_drops + (sp.drops if sp else 0),
                # slots touched and not released since (resident, at most)
                "spill_touched_bytes": __atomic_load_n(&sp.touched, __ATOMIC_RELAXED) * sp.block_size if sp else 0,
                "spill_released_bytes": self.spill_released_bytes +
                                        (__atomic_load_n(&sp.released, __ATOMIC_RELAXED) if sp else 0)}


# decode batches of FOLD_BLOCKS blocks: the sink folds each while it is in the cache
FOLD_BLOCKS = 8


cdef tuple ring_fold(object ring, dk_pkt_sink sink, void *ctx, uint32_t max_blocks, uint32_t linger_ms):
    """See dkebpf/_packets.pxd: PacketRing.read and the caller's fold in one
    call without the GIL (a thread that must take the GIL back after each
    read and each fold waits for it as often, behind whatever holds it)."""
    cdef PacketRing r = <PacketRing?>ring
    if r.ring == NULL:
        raise RuntimeError("packet ring used after close()")
    if r.sp == NULL:
        raise RuntimeError("ring_fold needs a spilling packet ring (start_spill)")
    if max_blocks == 0:
        raise ValueError("max_blocks must be positive")
    r._buffers(FOLD_BLOCKS)
    cdef Py_ssize_t cap_pkts = r._cap_pkts(r._max_blocks)
    cdef uint64_t cap_bytes = <uint64_t>r.block_size * r._max_blocks
    cdef dk_pkt *out = <dk_pkt *>cnp.PyArray_DATA(r._pkts)
    cdef uint8_t *pay = <uint8_t *>cnp.PyArray_DATA(r._payload)
    cdef Py_ssize_t got = 0
    cdef uint32_t used = 0
    cdef uint64_t blocks0 = r.blocks
    cdef bint more
    with nogil:
        more = r._drain_spill(sink, ctx, max_blocks, out, pay, cap_pkts, cap_bytes, &got, &used, linger_ms)
    return r.blocks - blocks0, more

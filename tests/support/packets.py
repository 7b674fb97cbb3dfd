"""Packets built by hand, one place for every test and benchmark that
feeds the decoders, the socket programs or the connection table: IPv4
(options, fragments, link padding, header checksum), IPv6 (extension
headers), TCP, UDP, Ethernet with VLAN tags, VXLAN. Addresses default to
documentation/private ones nobody routes."""
import struct

V4 = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
V6 = (b"\xfd" + bytes(14) + b"\x01", b"\xfd" + bytes(14) + b"\x02")
MAC_DST, MAC_SRC = b"\x02" * 6, b"\x04" * 6
VXLAN_FLAG_I = 0x08000000   # RFC 7348 5: the VNI is valid


def checksum(data):
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp(sport, dport, data=b"", flags=0x18, seq=1, ack=1, window=65535):
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                       window, 0, 0) + data


def udp(sport, dport, data=b""):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def ip4(proto, l4, src=V4[0], dst=V4[1], frag=0, pad=b"", options=b"", ident=0):
    """frag: the flags + fragment offset word (0x2000 more fragments,
    0x4000 don't fragment); pad: link padding after the packet."""
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), ident, frag, 64, proto, 0,
                      src, dst) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + l4 + pad


def ip6(proto, l4, src=V6[0], dst=V6[1], ext=()):
    """ext: extension headers as (type, length field, fragment offset)."""
    body = l4
    for kind, n, frag in reversed(ext):
        if kind == 44:
            hdr = struct.pack("!BBHI", proto, 0, frag << 3, 7)
        elif kind == 51:
            hdr = struct.pack("!BB", proto, n) + bytes((n + 2) * 4 - 2)
        else:
            hdr = struct.pack("!BB", proto, n) + bytes((n + 1) * 8 - 2)
        body, proto = hdr + body, kind
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), proto, 64, src, dst) + body


def ip_packet(family, proto, src, dst, sport, dport, payload, ip_options=b"", frag=0):
    """A TCP (PSH|ACK, seq 1, ack 0) or UDP packet of that family."""
    l4 = tcp(sport, dport, payload, ack=0) if proto == 6 else udp(sport, dport, payload)
    if family == 4:
        return ip4(proto, l4, src, dst, frag=frag, options=ip_options, ident=1)
    return ip6(proto, l4, src, dst)


def ethernet(ethertype, body, tags=(), dst=MAC_DST, src=MAC_SRC):
    """tags: (TPID, VLAN id) pairs, outermost first."""
    head = dst + src
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", ethertype) + body


def vxlan(vni, frame, flags=VXLAN_FLAG_I):
    """The VXLAN header and the inner Ethernet frame: a UDP payload."""
    return struct.pack("!II", flags, vni << 8) + frame

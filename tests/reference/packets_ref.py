"""Pure-Python reference of dkebpf._packets.decode_frame (link layer,
VLAN tags, VXLAN) for tests only; the network and transport headers are
dns_ref.decode_network's. Written from IEEE 802.1Q/802.1ad and RFC 7348."""
import struct

from reference.dns_ref import decode_network

ARPHRD_ETHER = 1
VLAN_TPIDS = (0x8100, 0x88A8)   # 802.1Q, 802.1ad; 0x9100 is not a tag
VXLAN_PORTS = (4789, 8472)


def _ethernet(p):
    """(network header offset, ethertype, outermost VLAN id) or "truncated"."""
    if len(p) < 14:
        return "truncated"
    ethertype, off, vlan = struct.unpack_from("!H", p, 12)[0], 14, 0
    for i in range(2):
        if ethertype not in VLAN_TPIDS:
            break
        if len(p) < off + 4:
            return "truncated"
        tci, ethertype = struct.unpack_from("!HH", p, off)
        vlan = tci & 0x0FFF if i == 0 else vlan
        off += 4
    return off, ethertype, vlan


def decode_frame(p, hatype, net_off=0, link_proto=0):
    """(fields, payload) or the failure name, like decode_frame."""
    p = bytes(p)
    if hatype == ARPHRD_ETHER:
        eth = _ethernet(p)
        if isinstance(eth, str):
            return eth
        off, ethertype, vlan = eth
    else:
        if net_off > len(p):
            return "truncated"
        off, ethertype, vlan = net_off, link_proto, 0
    got = decode_network(p[off:], ethertype)
    if isinstance(got, str):
        return got
    fields, payload = got
    fields["vlan"] = vlan
    if fields["proto"] != 17 or len(payload) < 8 or not payload[0] & 0x08 or \
            not {fields["sport"], fields["dport"]} & set(VXLAN_PORTS):
        return fields, payload
    vni = int.from_bytes(payload[4:7], "big")
    eth = _ethernet(payload[8:])
    if isinstance(eth, str):
        return eth
    inner_off, ethertype, _inner_vlan = eth
    got = decode_network(payload[8 + inner_off:], ethertype)
    if isinstance(got, str):
        return got
    fields, payload = got
    fields.update(vlan=vlan, vni=vni, vxlan=1)
    return fields, payload

"""bpf-netlog's frame decoder (dkebpf._packets.decode_frames, the code the
packet ring runs per frame) on frames built with dpkt: VLAN and QinQ tags,
IPv6 extension headers, IPv4 and IPv6 fragments, VXLAN on both ports, and
cut or malformed frames (a reason, never a wrong decode)."""
import socket
import struct

import dpkt
import numpy as np
import pytest

from dkebpf import _packets

MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"
SEQ, ACK = 0xFFFFFF00, 123456789


def tcp4(payload=b"GET / HTTP/1.1\r\n\r\n", flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH):
    t = dpkt.tcp.TCP(sport=40000, dport=80, seq=SEQ, ack=ACK, flags=flags, win=512, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"), p=6, data=t)
    ip.len = len(bytes(ip))
    return ip


def eth(ip, etype):
    return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=etype, data=bytes(ip)))


def ipv6_with(ext_headers, payload=b"hello"):
    """An IPv6 UDP packet behind the given (next header, body) extension headers."""
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload
    chain = b""
    nxt = [h for h, _ in ext_headers[1:]] + [17]
    for (_h, body), n in zip(ext_headers, nxt):
        chain += bytes([n]) + body
    first = ext_headers[0][0] if ext_headers else 17
    hdr = struct.pack("!IHBB", 0x60000000, len(chain) + len(udp), first, 64)
    return hdr + socket.inet_pton(socket.AF_INET6, "fd00::1") + socket.inet_pton(socket.AF_INET6, "fd00::2") \
        + chain + udp


def decode(*frames):
    data = b"".join(frames)
    lengths = np.array([len(f) for f in frames])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return _packets.decode_frames(data, offsets, lengths)


def test_tcp_fields_macs_and_payload():
    pkts, payload, status = decode(eth(tcp4(), 0x0800))
    assert list(status) == [0]
    p = pkts[0]
    assert (p["sport"], p["dport"], p["proto"], p["family"]) == (40000, 80, 6, 4)
    assert (p["tcp_seq"], p["tcp_ack"], p["tcp_win"], p["tcp_flags"]) == (SEQ, ACK, 512, 0x18)
    assert bytes(p["smac"]) == MAC_A and bytes(p["dmac"]) == MAC_B and p["link_ok"] == 1
    assert bytes(payload) == b"GET / HTTP/1.1\r\n\r\n" and p["payload_wire"] == len(payload)


@pytest.mark.parametrize("tags", [[0x8100], [0x88A8, 0x8100]])
def test_vlan_and_qinq_tags_are_skipped(tags):
    body = bytes(tcp4())
    frame = MAC_B + MAC_A
    for t in tags:
        frame += struct.pack("!HH", t, 7)
    frame += struct.pack("!H", 0x0800) + body
    pkts, _payload, status = decode(frame)
    assert list(status) == [0] and pkts[0]["tcp_seq"] == SEQ


def test_ipv6_extension_headers_are_followed():
    hop = (0, b"\x00" + b"\x01\x04\x00\x00\x00\x00")                 # hop-by-hop, 8 bytes
    dst = (60, b"\x01" + b"\x01\x0c" + bytes(12))                    # destination options, 16 bytes
    frag_first = (44, b"\x00" + struct.pack("!HI", 0x0001, 7))       # offset 0, more fragments
    pkts, payload, status = decode(eth(ipv6_with([hop, dst]), 0x86DD), eth(ipv6_with([hop, frag_first]), 0x86DD))
    assert list(status) == [0, 0]
    assert list(pkts["dport"]) == [53, 53] and list(pkts["family"]) == [6, 6]
    assert bytes(payload) == b"hellohello"


def test_fragments_are_counted_not_parsed():
    later6 = (44, b"\x00" + struct.pack("!HI", 0x0008 | 1, 7))       # offset 8 bytes
    raw = bytearray(bytes(tcp4()))
    raw[6:8] = struct.pack("!H", 0x2000 | 3)                         # IPv4: more fragments, offset 24 bytes
    _pkts, _payload, status = decode(eth(ipv6_with([later6]), 0x86DD), eth(bytes(raw), 0x0800))
    assert list(status) == [_packets_status("fragment")] * 2


def _packets_status(name):
    return {v: k for k, v in _packets.DECODE_STATUS.items()}[name]


@pytest.mark.parametrize("port", [4789, 8472])
def test_vxlan_is_decapsulated(port):
    inner = eth(tcp4(), 0x0800)
    vx = struct.pack("!II", 0x08000000, 4242 << 8) + inner
    udp = dpkt.udp.UDP(sport=33333, dport=port, data=vx)
    udp.ulen = len(bytes(udp))
    outer = dpkt.ip.IP(src=socket.inet_aton("192.168.0.1"), dst=socket.inet_aton("192.168.0.2"), p=17, data=udp)
    outer.len = len(bytes(outer))
    pkts, payload, status = decode(eth(outer, 0x0800))
    assert list(status) == [0]
    p = pkts[0]
    assert (p["vxlan"], p["vni"], p["proto"], p["dport"], p["tcp_seq"]) == (1, 4242, 6, 80, SEQ)
    assert bytes(p["saddr"])[:4] == socket.inet_aton("10.0.0.1")
    assert bytes(payload) == b"GET / HTTP/1.1\r\n\r\n"


def test_cut_and_malformed_frames_give_a_reason():
    whole = eth(tcp4(), 0x0800)
    cuts = [whole[:10], whole[:14 + 20 + 10], MAC_B + MAC_A + b"\x08\x06" + bytes(28)]
    _pkts, _payload, status = decode(*cuts)
    names = [_packets.DECODE_STATUS[s] for s in status]
    assert names == ["not_ip", "truncated", "not_ip"]

"""dkebpf._packets.decode_frame (Ethernet, 802.1Q/802.1ad tags, VXLAN
opened, TCP sequence numbers) against the pure-Python reference
(tests/reference/packets_ref.py) with hypothesis, on well-formed and
damaged frames."""
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkebpf import _packets
from reference import packets_ref as ref
from support.packets import V4, V6, ethernet, ip_packet, vxlan


def decode(frames):
    data = b"".join(f for f, _h in frames)
    offs = np.cumsum([0] + [len(f) for f, _h in frames[:-1]]) if frames else []
    return _packets.decode_frames(data, offs, [len(f) for f, _h in frames], [h for _f, h in frames])


@st.composite
def ip(draw):
    fam = draw(st.sampled_from((4, 6)))
    proto = draw(st.sampled_from((6, 17)))
    src, dst = V4 if fam == 4 else V6
    ports = st.sampled_from((53, 80, 4789, 8472, 40000))
    pkt = ip_packet(fam, proto, src, dst, draw(ports), draw(ports), draw(st.binary(max_size=24)))
    if proto == 6:   # sequence numbers and window
        at = 20 if fam == 4 else 40
        pkt = pkt[:at + 4] + struct.pack("!II", draw(st.integers(0, 2**32 - 1)),
                                         draw(st.integers(0, 2**32 - 1))) + pkt[at + 12:at + 14] + \
            struct.pack("!H", draw(st.integers(0, 65535))) + pkt[at + 16:]
    return (0x0800 if fam == 4 else 0x86DD), pkt


tags = st.lists(st.tuples(st.sampled_from((0x8100, 0x88A8, 0x9100)), st.integers(0, 0xFFFF)), max_size=3)


@st.composite
def frame(draw):
    ethertype, pkt = draw(ip())
    body = ethernet(ethertype, pkt, draw(tags))
    if draw(st.booleans()):   # wrap in VXLAN
        flags = draw(st.sampled_from((0x08000000, 0x08000000, 0)))
        vx = vxlan(draw(st.integers(0, 2**24 - 1)), body, flags)
        fam = draw(st.sampled_from((4, 6)))
        src, dst = V4 if fam == 4 else V6
        outer = ip_packet(fam, 17, src, dst, 40000, draw(st.sampled_from((4789, 8472, 4790))), vx)
        body = ethernet(0x0800 if fam == 4 else 0x86DD, outer, draw(tags))
    body = bytearray(body + draw(st.binary(max_size=4)))   # link padding
    for _ in range(draw(st.integers(0, 2))):   # damage
        if body:
            i = draw(st.integers(0, len(body) - 1))
            if draw(st.booleans()):
                body = body[:i]
            else:
                body[i] = draw(st.integers(0, 255))
    return bytes(body), draw(st.sampled_from((1, 1, 1, 772)))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame(), max_size=6))
def test_frame_decode_agrees_with_reference(frames):
    pkts, payload, status = decode(frames)
    names = _packets.DECODE_STATUS
    j = 0
    for i, (f, hatype) in enumerate(frames):
        want = ref.decode_frame(f, hatype)
        if isinstance(want, str):
            assert names[status[i]] == want, i
            continue
        assert names[status[i]] == "decoded", i
        fields, data = want
        row = pkts[j]
        for k, v in fields.items():
            got = bytes(row[k]) if k in ("saddr", "daddr") else int(row[k])
            assert got == v, k
        assert bytes(payload[row["payload_off"]:row["payload_off"] + row["payload_len"]]) == data
        j += 1
    assert j == len(pkts)


def test_vxlan_inner_packet_with_qinq_outside():
    inner_src, inner_dst = bytes.fromhex("0a0000000001"), bytes.fromhex("0a0000000002")
    vx = vxlan(4242, ethernet(0x0800, ip_packet(4, 6, *V4, 1234, 80, b"GET / HTTP/1.1\r\n"), dst=inner_dst,
                              src=inner_src))
    outer = ethernet(0x86DD, ip_packet(6, 17, *V6, 40000, 8472, vx), ((0x88A8, 7), (0x8100, 100)))
    plain = ethernet(0x0800, ip_packet(4, 6, *V4, 1234, 80, b""))
    pkts, payload, status = decode([(outer, 1), (plain, 1)])
    assert status.tolist() == [0, 0]
    # MAC addresses (bpf-netlog's message series): the inner frame's under VXLAN
    assert (bytes(pkts[0]["smac"]), bytes(pkts[0]["dmac"])) == (inner_src, inner_dst)
    assert (bytes(pkts[1]["smac"]), bytes(pkts[1]["dmac"])) == (plain[6:12], plain[:6])
    row = pkts[0]
    assert (row["family"], row["proto"], row["sport"], row["dport"]) == (4, 6, 1234, 80)
    assert (row["vxlan"], row["vni"], row["vlan"]) == (1, 4242, 7)
    assert bytes(row["saddr"])[:4] == V4[0] and bytes(payload) == b"GET / HTTP/1.1\r\n"

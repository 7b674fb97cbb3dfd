"""The TCP window scale option read from SYN segments by the packet
decoder (dk_pkt.wscale, RFC 7323 2.2-2.3), which bpf-netlog's series uses
to scale `win`: packets built with dpkt, options in every order."""
import dpkt
import pytest

from dkebpf import _packets

NONE = 0xFF
MSS, SACK_OK, TS = b"\x02\x04\x05\xb4", b"\x04\x02", b"\x08\x0a" + bytes(8)


def wscale_of(opts, flags=dpkt.tcp.TH_SYN):
    tcp = dpkt.tcp.TCP(sport=40000, dport=80, seq=1, flags=flags, win=64240, opts=opts)
    tcp.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=6, data=tcp)
    data = bytes(ip)
    pkts, _payload, status = _packets.decode_packets(data, [0], [len(data)], [0x0800])
    assert list(status) == [0]
    return int(pkts["wscale"][0])


@pytest.mark.parametrize("opts,want", [
    (MSS + SACK_OK + TS + b"\x01\x03\x03\x07", 7),      # Linux's SYN
    (b"\x01\x03\x03\x00" + MSS, 0),                      # shift 0 is an option too
    (b"\x03\x03\x0e\x00", 14),
    (b"\x03\x03\x14\x00", 14),                           # over 14: used as 14 (RFC 7323 2.3)
    (MSS + SACK_OK + TS + b"\x01\x01\x01\x01", NONE),    # no window scale
    (b"\x00\x03\x03\x07", NONE),                         # after the end of options
    (b"\x02\x00\x03\x03\x07\x00\x00\x00", NONE),         # a length of 0: malformed, not looped on
    (b"\x01\x01\x01\x03", NONE),                         # cut inside the option
])
def test_syn_window_scale(opts, want):
    assert wscale_of(opts) == want


def test_only_syn_segments_carry_it():
    assert wscale_of(b"\x01\x03\x03\x07", flags=dpkt.tcp.TH_ACK) == NONE
    assert wscale_of(b"\x01\x03\x03\x07", flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK) == 7

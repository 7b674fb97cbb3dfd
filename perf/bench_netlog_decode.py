"""bpf-netlog's user-space data plane on a recorded ring: Ethernet frames
decoded (dkebpf._packets.decode_frames: link layer, VLAN, IP, TCP, VXLAN)
and folded into per-connection L4 state (dkebpf._netlog.ConnTable), one
core, against the memcpy of the same bytes measured in the same run.

The recording: N frames of C concurrent TCP connections, each a handshake,
bulk data one way (1448-byte segments, 64 bytes captured as the socket's
snap length would not cut them: counts come from headers) answered by pure
ACKs, and a close; 1 frame in 8 VLAN-tagged, 1 connection in 16 inside
VXLAN. Frames are cut at 128 bytes, as a capture ring holds them. Times are
the CPU time of this thread (best of 5): what one core does, however many
other processes share the machine.

Prints `name: value` lines; the target is >= 1 M packets/s per core for
decode + L4 state. decode_plus_l4 includes the per-packet message series
and writing every chunk's message JSON (bpf_net_l4_log on, the default);
l4_state_no_series_mpps is the L4 state alone as with --netlog-metric only,
so the series' cost is their ratio, measured in the same run."""
import os
import sys
import time

import numpy as np

from timing import best_of

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from support.packets import ethernet, ip4, tcp, udp, vxlan  # noqa: E402

from dkebpf import _netlog, _packets  # noqa: E402

N = 1_000_000
CONNS = 512
SNAP = 128


def frame(conn, tx, flags, seq, ack, payload_len, vlan, vx):
    a, b = bytes([10, 1, conn >> 8, conn & 0xFF]), bytes([10, 2, 0, 1])
    src, dst, sport, dport = (a, b, 40000 + conn, 80) if tx else (b, a, 80, 40000 + conn)
    pkt = ip4(6, tcp(sport, dport, bytes(payload_len), flags, seq, ack), src, dst, frag=0x4000)
    if vx:
        outer = ip4(17, udp(50000, 4789, vxlan(42, ethernet(0x0800, pkt))), b"\xc0\xa8\x00\x01",
                    b"\xc0\xa8\x00\x02", frag=0x4000)
        pkt = outer
    return ethernet(0x0800, pkt, ((0x8100, 10),) if vlan else ())


def recording(n):
    frames = []
    seqs = {}
    conn = 0
    while len(frames) < n:
        c = conn % CONNS
        vx = c % 16 == 0
        s, r = seqs.get(c, (1000 * c, 7000 * c))
        for i in range(40):
            vlan = len(frames) % 8 == 0
            if i == 0:
                frames.append(frame(c, True, 0x02, s, 0, 0, vlan, vx))
            elif i == 1:
                frames.append(frame(c, False, 0x12, r, s + 1, 0, vlan, vx))
            elif i == 39:
                frames.append(frame(c, True, 0x11, s, r, 0, vlan, vx))
            elif i % 2:
                frames.append(frame(c, True, 0x18, s, r, 1448, vlan, vx))
                s += 1448
            else:
                frames.append(frame(c, False, 0x10, r, s, 0, vlan, vx))
        seqs[c] = (s + 100_000, r + 100_000)
        conn += 1
    frames = frames[:n]
    lengths = np.array([min(len(f), SNAP) for f in frames], np.int64)
    data = b"".join(f[:SNAP] for f in frames)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return data, offsets, lengths


def main():
    data, offsets, lengths = recording(N)
    ether = np.ones(N, np.int64)   # ARPHRD_ETHER
    pkts, payload, status = _packets.decode_frames(data, offsets, lengths, ether)
    assert (status == 0).all() and len(pkts) == N
    # a recording has no direction: every other frame is "outgoing"
    pkts["pkttype"][::2] = 4

    def memcpy():
        np.frombuffer(data, np.uint8).copy()

    def decode():
        _packets.decode_frames(data, offsets, lengths, ether)

    def l4():
        _netlog.ConnTable(max_conns=4096).add(pkts, payload)

    def l4_no_series():
        _netlog.ConnTable(max_conns=4096, series=False).add(pkts, payload)

    def l4_messages():
        t = _netlog.ConnTable(max_conns=4096)
        t.add(pkts, payload)
        t.collect(0, True)

    def both():
        p, pl, _st = _packets.decode_frames(data, offsets, lengths, ether)
        p["pkttype"][::2] = 4
        t = _netlog.ConnTable(max_conns=4096)
        t.add(p, pl)   # with payload: the HTTP first-line check runs on every data segment
        t.collect(0, True)

    t_copy, t_dec, t_l4, t_l4ns, t_l4msg, t_both = (best_of(f, 5, clock=time.thread_time) for f in (
        memcpy, decode, l4, l4_no_series, l4_messages, both))
    print(f"packets: {N}")
    print(f"bytes_recorded: {len(data)}")
    print(f"decode_mpps: {N / t_dec / 1e6:.2f}")
    print(f"l4_state_mpps: {N / t_l4 / 1e6:.2f}")
    print(f"l4_state_no_series_mpps: {N / t_l4ns / 1e6:.2f}")
    print(f"l4_state_and_messages_mpps: {N / t_l4msg / 1e6:.2f}")
    print(f"series_and_messages_cost_ratio: {t_l4msg / t_l4ns:.2f}")
    print(f"decode_plus_l4_mpps: {N / t_both / 1e6:.2f}")
    print(f"memcpy_ratio_decode_plus_l4: {t_both / t_copy:.1f}")


if __name__ == "__main__":
    main()

"""Frame decode speed for bpf-netlog: dkebpf._packets.decode_frames
(Ethernet, VLAN tags, IPv4/IPv6, TCP/UDP, VXLAN opened, payload copied into
one buffer) against the memcpy limit (numpy copying the same bytes) and the
pure-Python reference, on the same frames, in the same run.

Frames: N, a mix seen on a node: TCP over IPv4 (70 %, a quarter of them
with 1400 bytes of payload, the rest pure ACKs or small requests), TCP over
IPv6 (10 %), TCP inside VXLAN over IPv4 (15 %), VLAN-tagged TCP (5 %).

Prints `name: value` lines."""
import random
import socket
import sys

import numpy as np

from timing import TESTS_DIR, best_of

sys.path.insert(0, TESTS_DIR)   # reference/ and support/ as packages (no dkebpf there to shadow)

from dkebpf import _packets  # noqa: E402
from reference import packets_ref  # noqa: E402
from support.packets import ethernet, ip_packet, vxlan  # noqa: E402

V4 = (socket.inet_aton("10.244.1.7"), socket.inet_aton("10.244.2.9"))
V6 = (socket.inet_pton(socket.AF_INET6, "fd00::7"), socket.inet_pton(socket.AF_INET6, "fd00::9"))


def frames(n, seed=12):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        payload = rng.choice((b"", b"", b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n", b"x" * 1400))
        kind = rng.random()
        fam = 6 if 0.70 <= kind < 0.80 else 4
        src, dst = V6 if fam == 6 else V4
        pkt = ip_packet(fam, 6, src, dst, rng.randrange(32768, 61000), 8080, payload)
        et = 0x86DD if fam == 6 else 0x0800
        if kind >= 0.95:
            out.append(ethernet(et, pkt, ((0x8100, 100),)))
        elif kind >= 0.80:
            out.append(ethernet(0x0800, ip_packet(4, 17, *V4, 40000, 4789, vxlan(42, ethernet(et, pkt)))))
        else:
            out.append(ethernet(et, pkt))
    return out


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    batch = frames(n)
    data = b"".join(batch)
    lens = np.array([len(f) for f in batch])
    offs = np.concatenate(([0], np.cumsum(lens)[:-1]))
    hat = np.ones(n)
    pkts, _payload, status = _packets.decode_frames(data, offs, lens, hat)
    assert (status == 0).all() and len(pkts) == n
    ref_n = min(n, 20_000)
    for i in range(0, ref_n, 97):   # the reference agrees on a sample
        fields, _p = packets_ref.decode_frame(batch[i], 1)
        assert all(int(pkts[i][k]) == v for k, v in fields.items() if k not in ("saddr", "daddr"))
    raw = np.frombuffer(data, np.uint8)
    ours = best_of(lambda: _packets.decode_frames(data, offs, lens, hat))
    memcpy = best_of(lambda: raw.copy())
    ref = best_of(lambda: [packets_ref.decode_frame(f, 1) for f in batch[:ref_n]], repeat=2)
    print(f"packet_frames: {n}")
    print(f"packet_frames_bytes: {len(data)}")
    print(f"packet_frames_decode_per_s: {n / ours:.0f}")
    print(f"packet_frames_decode_vs_memcpy: {memcpy / ours:.3f}")
    print(f"packet_frames_decode_vs_reference: {(n / ours) / (ref_n / ref):.1f}")


if __name__ == "__main__":
    main()

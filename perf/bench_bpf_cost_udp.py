"""In-kernel cost of netflow's programs for unconnected UDP (the peer read
from the sendto/recvfrom address): 100k datagram round trips on loopback
(sendto + recvfrom of 32 bytes) with the collector's netflow attached;
prints ns per run and the total BPF ns per round (kernel.bpf_stats_enabled
is set for the run and restored).

    python3 perf/bench_bpf_cost_udp.py
"""
import socket
import tempfile

from bench_bpf_cost import STATS, prog_names
from collector import Collector

N = 100000


def main():
    old = open(STATS).read().strip()
    with open(STATS, "w") as f:
        f.write("1")
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                Collector(tmp, "udp", ["--enabled", "ebpf-net", "--l7net-disabled", "httpflow"]) as c:
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            a.bind(("127.0.0.1", 0))
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b.bind(("127.0.0.1", 0))
            before = c.prog_stats()
            for _ in range(N):
                a.sendto(b"x" * 32, b.getsockname())
                b.recvfrom(64)
            after = c.prog_stats()
            names = prog_names(set(after))
    finally:
        with open(STATS, "w") as f:
            f.write(old)
    tot = 0
    for pid_, (cnt, ns, _) in after.items():
        c0, n0, _ = before.get(pid_, (0, 0, 0))
        if cnt - c0:
            tot += ns - n0
            print(f"{names.get(pid_)}: {(cnt - c0) / N:.2f}/dgram {(ns - n0) / (cnt - c0):.0f} ns/run")
    print(f"total ns per datagram round: {tot / N:.0f}")


if __name__ == "__main__":
    main()

"""DNS message parsing speed against dnspython (dns.message.from_wire) and
the pure-Python reference, on the same messages, in the same run.

Inputs: N messages built with dnspython, half queries and half answers
(a CNAME chain and 1-4 A/AAAA records, name compression as servers do).
`ours` parses them from a list of bytes (header, question, answers,
CNAME chain); `ours_batch` is the capture path: the same messages as UDP
payloads in one buffer through parse_packets into numpy rows.

With root, also the capture path on real packets: N query/answer pairs
over loopback (127.77.x.y port 53) are sent first, then the time to drain
the packet ring, decode, parse and pair them is measured (the consumer's
cost per packet; the kernel's sending is not timed).

Prints `name: value` lines.
"""
import os
import random

import numpy as np

from timing import best_of, load_reference

import dns.message
import dns.rrset

from dkebpf import _dns
from dkebpf._packets import PKT_DTYPE

N = int(os.environ.get("BENCH_DNS_N", 20_000))


def messages(n):
    rng = random.Random(1)
    out = []
    for i in range(n // 2):
        name = f"{rng.choice(['www', 'api', 'cdn', 'login'])}{i % 97}.example{i % 13}.com."
        q = dns.message.make_query(name, rng.choice(["A", "AAAA"]))
        r = dns.message.make_response(q)
        edge = f"edge{i % 7}.cdn.example.net."
        r.answer.append(dns.rrset.from_text(name, 300, "IN", "CNAME", edge))
        r.answer.append(dns.rrset.from_text(edge, 60, "IN", "A",
                                            *[f"10.{i % 250}.{k}.{rng.randint(1, 254)}"
                                              for k in range(rng.randint(1, 4))]))
        out += [q.to_wire(), r.to_wire()]
    return out


def main():
    msgs = messages(N)
    ref = load_reference("dns_ref")
    assert _dns.parse_many(msgs) == len(msgs)
    # the same answers from both parsers (spot check)
    for m in msgs[:200]:
        assert _dns.parse(m) == ref.parse(m)

    pkts = np.zeros(len(msgs), PKT_DTYPE)
    lens = np.array([len(m) for m in msgs], np.uint32)
    pkts["payload_len"] = lens
    pkts["payload_wire"] = lens
    pkts["payload_off"] = np.concatenate([[0], np.cumsum(lens[:-1])])
    pkts["proto"] = 17
    pkts["family"] = 4
    payload = np.frombuffer(b"".join(msgs), np.uint8)
    assert len(_dns.parse_packets(pkts, payload)[0]) == len(msgs)

    t_ours = best_of(lambda: _dns.parse_many(msgs))
    t_batch = best_of(lambda: _dns.parse_packets(pkts, payload))
    t_dnspython = best_of(lambda: [dns.message.from_wire(m) for m in msgs], repeat=3)
    sample = msgs[: max(len(msgs) // 10, 1)]
    t_ref = best_of(lambda: [ref.parse(m) for m in sample], repeat=3) * len(msgs) / len(sample)
    print(f"messages: {len(msgs)}")
    print(f"bytes_per_message: {len(payload) / len(msgs):.1f}")
    print(f"ours_msgs_per_s: {len(msgs) / t_ours:.0f}")
    print(f"ours_batch_msgs_per_s: {len(msgs) / t_batch:.0f}")
    print(f"dnspython_msgs_per_s: {len(msgs) / t_dnspython:.0f}")
    print(f"reference_msgs_per_s: {len(msgs) / t_ref:.0f}")
    print(f"speedup_vs_dnspython: {t_dnspython / t_ours:.1f}")
    print(f"batch_speedup_vs_dnspython: {t_dnspython / t_batch:.1f}")
    print(f"speedup_vs_reference: {t_ref / t_ours:.1f}")


def capture_bench(pairs=5000, rounds=3):
    import socket
    import time
    from dkebpf import _packets
    from dkebpf.packetfilter import port_filter
    addr = f"127.77.{random.randint(1, 254)}.{random.randint(1, 254)}"
    q = dns.message.make_query("bench.example.com.", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("bench.example.com.", 60, "IN", "A", "10.0.0.1"))
    qw, rw = bytearray(q.to_wire()), bytearray(r.to_wire())
    best = float("inf")
    # blocks retire when full or after 100 ms: the ring's 16 blocks hold a
    # round however slowly a busy machine sends it (at 5 ms a block each,
    # a round taking > 80 ms to send overran the ring)
    with _packets.PacketRing(port_filter(53), retire_ms=100) as ring, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        srv.bind((addr, 53))
        cli.bind((addr, 0))
        cport = cli.getsockname()[1]
        for _ in range(rounds):
            table = _dns.PairTable(pairs + 16)
            for i in range(pairs):
                qw[0:2] = rw[0:2] = i.to_bytes(2, "big")
                cli.sendto(qw, (addr, 53))
                srv.sendto(rw, (addr, cport))
            time.sleep(0.3)   # every block retired
            t = time.perf_counter()
            n = paired = 0
            while True:
                pkts, payload, more = ring.read()
                n += len(pkts)
                if len(pkts):
                    msgs, _a, _c = _dns.parse_packets(pkts, payload)
                    paired += int(table.add(msgs).sum())
                if not more:
                    break
            best = min(best, time.perf_counter() - t)
            while srv.recv(4096, socket.MSG_DONTWAIT) if _pending(srv) else None:
                pass
            while cli.recv(4096, socket.MSG_DONTWAIT) if _pending(cli) else None:
                pass
        drops = ring.counters()["kernel_drops"]
    assert n == 2 * pairs and paired == pairs, (n, paired, drops)
    print(f"capture_packets: {n}")
    print(f"capture_ns_per_packet: {best / n * 1e9:.0f}")
    print(f"capture_packets_per_s: {n / best:.0f}")
    print(f"capture_kernel_drops: {drops}")


def _pending(sock):
    import select
    return bool(select.select([sock], [], [], 0)[0])


if __name__ == "__main__":
    main()
    if os.geteuid() == 0:
        capture_bench()

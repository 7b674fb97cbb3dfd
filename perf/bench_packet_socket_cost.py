"""What packet sockets add to loopback traffic: one thread ping-pongs 64
bytes over a loopback TCP connection (4 socket calls, 4 packets per round
trip, delivered inline), timed in that thread's CPU time (waiting for a CPU
does not count: less exposed to other load on a shared box than wrk's
requests/s), in short slices whose modes rotate; each mode's sockets are
opened before its slice and closed after:
  off          none
  pktsock_all  ETH_P_ALL on no device, filter dropping everything (the
               kernel clones each packet sent, on any device, for it)
  pktsock_in   the same with PACKET_IGNORE_OUTGOING
  pktsock_dev  the same as pktsock_all bound to the default route's device
  dnsflow_old  dnsflow's single socket (port-53 filter, all interfaces)
  dnsflow_new  dnsflow's sockets: received on all interfaces, sent on each
               interface other than loopback
Prints per mode the median CPU ns per round trip and the median of
per-slice ratios against the `off` slice next to it (the sockets opened
before a slice, 4 MiB rings, cost it some cache: pktsock_dev, whose socket
is not on loopback's path, shows that part), then of pktsock_in against
pktsock_all and dnsflow_new against dnsflow_old in the same slice.

    python3 perf/bench_packet_socket_cost.py   (BENCH_SLICES=40, BENCH_TRIPS=2000; root)
"""
import contextlib
import os
import socket
import statistics
import time

from bench_httpflow_e2e import PKTSOCK_MODES, drop_all_socket


@contextlib.contextmanager
def dnsflow_sockets(new):
    from dkebpf import _dns, _packets, links
    from dkebpf.packetfilter import port_filter
    from dkebpf.plugins.dnsflow import receive_ring, transmit_ring
    if not new:
        rings = [_packets.PacketRing(port_filter(_dns.DNS_PORT))]
    else:
        rx, split = receive_ring()
        if not split:
            raise SystemExit("no PACKET_IGNORE_OUTGOING on this kernel")
        rings = [rx]
        for i, flags in links.dump().items():
            if not flags & links.IFF_LOOPBACK:
                try:
                    rings.append(transmit_ring(i))
                except OSError:   # gone meanwhile (other tests' veths come and go)
                    pass
    try:
        yield
    finally:
        for r in rings:
            r.close()


def mode_sockets(m):
    if m in PKTSOCK_MODES:
        return drop_all_socket(m)
    if m.startswith("dnsflow_"):
        return dnsflow_sockets(m == "dnsflow_new")
    return contextlib.nullcontext()


def main():
    slices, trips = int(os.environ.get("BENCH_SLICES", 40)), int(os.environ.get("BENCH_TRIPS", 2000))
    modes = ("off", *PKTSOCK_MODES, "dnsflow_old", "dnsflow_new")
    lst = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lst.getsockname())
    b, _ = lst.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * 64

    def slice_ns():
        t0 = time.thread_time_ns()
        for _ in range(trips):
            a.send(msg)
            b.recv(256)
            b.send(msg)
            a.recv(256)
        return (time.thread_time_ns() - t0) / trips

    per = {m: [] for m in modes}
    ratio = {m: [] for m in modes[1:]}
    slice_ns()  # warm-up
    for k in range(slices):
        got = {}
        for m in modes[k % len(modes):] + modes[:k % len(modes)]:
            with mode_sockets(m):
                got[m] = slice_ns()
        for m in modes:
            per[m].append(got[m])
        for m in modes[1:]:
            ratio[m].append(got[m] / got["off"])
    for s in (a, b, lst):
        s.close()
    print(f"loopback TCP ping-pong, 64 bytes, {slices} slices of {trips} round trips per mode")
    for m in modes:
        print(f"{m}_cpu_ns_per_round_trip_median: {statistics.median(per[m]):.0f}")
    for m in modes[1:]:
        print(f"{m}_cpu_ratio_median: {statistics.median(ratio[m]):.3f}  (off / mode: "
              f"{statistics.median(1 / r for r in ratio[m]):.3f})")
    # side by side in each slice: what the change alone did (both opened
    # the same way before their slice, so the opening's own cache cost cancels)
    for new, old in (("pktsock_in", "pktsock_all"), ("dnsflow_new", "dnsflow_old")):
        print(f"{new}_over_{old}_cpu_ratio_median: "
              f"{statistics.median(n / o for n, o in zip(per[new], per[old])):.3f}")
    print(f"load_average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""bpf-netlog end to end (root): a bulk TCP transfer through a veth pair
into a test namespace, GSO off on both sides so every MSS-sized segment is
a packet, captured by the plugin's socket inside the namespace (ring,
decode, L4 state), while this process drains it as the agent would.

Prints `name: value` lines: packets per second captured, socket drops
(tp_drops, must be 0), and this process's CPU (user + system) per
100k packets/s. The sender and receiver are other processes."""
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from support.netns import NetNS  # noqa: E402

from dkebpf.plugins.netlog import NicCapture, in_netns, list_nics  # noqa: E402

PORT = 18090
SECONDS = 8


def main():
    with NetNS() as ns:
        for side in (["ip", "link", "set", "dev", ns.veth_host], ns.prefix() + ["ip", "link", "set", "dev",
                                                                                 ns.veth_peer]):
            subprocess.run(side + ["gso_max_size", "1500", "gso_max_segs", "1"], check=True)
        subprocess.run(ns.prefix() + ["ethtool", "-K", ns.veth_peer, "gro", "off"], capture_output=True)
        path = f"/var/run/netns/{ns.name}"
        with in_netns(path):
            nic = next(n for n in list_nics() if n.name == ns.veth_peer)
        cap = NicCapture.open(path, 0, nic, False)
        sink = subprocess.Popen(ns.prefix() + ["python3", "-c", (
            f"import socket;s=socket.socket();s.bind(('{ns.peer_ip}',{PORT}));s.listen();print('ready',flush=True)\n"
            f"c,_=s.accept()\nwhile c.recv(1<<20): pass")], stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready"
        sender = subprocess.Popen([sys.executable, "-c", (
            f"import socket,time;c=socket.create_connection(('{ns.peer_ip}',{PORT}));b=bytes(1<<20)\n"
            f"end=time.monotonic()+{SECONDS}\nwhile time.monotonic()<end: c.sendall(b)\nc.close()")])
        t0, c0 = time.monotonic(), os.times()
        while sender.poll() is None:
            cap.ring.wait(20)
            cap.drain()
        sink.wait(10)
        cap.ring.wait(200)
        cap.drain()
        t1, c1 = time.monotonic(), os.times()
        counters = cap.ring.counters()
        cap.close()
    pps = counters["packets"] / (t1 - t0)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    print(f"packets: {counters['packets']}")
    print(f"packets_per_s: {pps:.0f}")
    print(f"socket_drops: {counters['kernel_drops']}")
    print(f"ring_queue_freezes: {counters['kernel_queue_freezes']}")
    print(f"collector_cpu_percent_per_100k_pps: {100 * cpu / (t1 - t0) / (pps / 1e5):.1f}")


if __name__ == "__main__":
    main()

"""ebpf-conntrack under connection churn (root; not part of `make perf`,
it adds an iptables rule): the collector's CPU while a client opens and
closes short TCP connections on loopback as fast as it can.

A DNAT rule that matches nothing (a port on an address of no interface) is
added to the host's nat OUTPUT chain only so that conntrack tracks the
host's traffic, as it does on any host with NAT rules (kube-proxy); it is
deleted again at the end. Run with the collector's groups as configured in
dkebpf/plugins/conntrack.py:

    python3 perf/conntrack_load.py [seconds]     (as root, after make install)

Prints `name: value` lines: connections/s, conntrack events/s received, the
collector's CPU (cores) and CPU per 1000 connections/s, ENOBUFS and resyncs.
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

from collector import Collector

RULE = ["-d", "10.213.250.100/32", "-p", "tcp", "--dport", "1", "-m", "comment", "--comment",
        f"dkebpf-perf-{os.getpid()}", "-j", "DNAT", "--to-destination", "10.213.250.2:1"]


def churn(seconds):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    port = srv.getsockname()[1]

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.close()
    threading.Thread(target=accept, daemon=True).start()
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        socket.create_connection(("127.0.0.1", port)).close()
        n += 1
    srv.close()
    return n


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    subprocess.run(["iptables", "-w", "10", "-t", "nat", "-A", "OUTPUT", *RULE], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="dkebpf-ctload-") as tmp:
            with Collector(tmp, "conntrack", ["--enabled", "ebpf-conntrack", "--log-level", "debug"]) as c:
                time.sleep(1)
                c0, t0 = c.cpu_seconds(), time.monotonic()
                conns = churn(seconds)
                time.sleep(2.5)  # one more flush, so the counters below include the churn
                c1, t1 = c.cpu_seconds(), time.monotonic()
            last = [ln for ln in open(c.log) if "ebpf-conntrack counters" in ln][-1]
    finally:
        subprocess.run(["iptables", "-w", "10", "-t", "nat", "-D", "OUTPUT", *RULE], check=True)
    counter = lambda name: int(re.search(rf"'{name}': (\d+)", last).group(1))  # noqa: E731
    rate = conns / seconds
    cores = (c1 - c0) / (t1 - t0)
    print(f"conntrack_load_connections_per_s: {rate:.0f}")
    print(f"conntrack_load_events_received_per_s: {counter('events_datagrams') / (t1 - t0):.0f}")
    print(f"conntrack_load_collector_cpu_cores: {cores:.3f}")
    print(f"conntrack_load_cpu_cores_per_1k_conn_per_s: {cores / rate * 1000:.4f}")
    print(f"conntrack_load_enobufs: {counter('events_enobufs')}")
    print(f"conntrack_load_resyncs: {counter('resyncs')}")


if __name__ == "__main__":
    main()

"""ebpf-conntrack under connection churn (root; not part of `make perf`,
it adds an iptables rule): the collector's CPU while a client opens and
closes short TCP connections on loopback as fast as it can.

A DNAT rule that matches nothing (a port on an address of no interface) is
added to the host's nat OUTPUT chain only so that conntrack tracks the
host's traffic, as it does on any host with NAT rules (kube-proxy); it is
deleted again at the end. Run with the collector's groups as configured in
dkebpf/plugins/conntrack.py:

    sudo PYTHONPATH=. python3 perf/conntrack_load.py [seconds]

Prints `name: value` lines: connections/s, conntrack events/s received, the
collector's CPU (cores) and CPU per 1000 connections/s, ENOBUFS and resyncs.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

RULE = ["-d", "10.213.250.100/32", "-p", "tcp", "--dport", "1", "-m", "comment", "--comment",
        f"dkebpf-perf-{os.getpid()}", "-j", "DNAT", "--to-destination", "10.213.250.2:1"]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    tmp = tempfile.mkdtemp(prefix="dkebpf-ctload-")
    log = os.path.join(tmp, "log")
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dkebpf", "run", "--enabled", "ebpf-conntrack",
                                 "--output", os.devnull, "--interval", "2s", "--log", log,
                                 "--log-level", "debug", "--pidfile", os.path.join(tmp, "pid")], cwd=tmp)
        end = time.monotonic() + 30
        while time.monotonic() < end and not (os.path.exists(log) and "dkebpf started" in open(log).read()):
            time.sleep(0.1)
        time.sleep(1)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        conns = churn(seconds)
        time.sleep(2.5)  # one more flush, so the counters below include the churn
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        subprocess.run(["iptables", "-w", "10", "-t", "nat", "-D", "OUTPUT", *RULE], check=True)
    last = [ln for ln in open(log) if "ebpf-conntrack counters" in ln][-1]
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

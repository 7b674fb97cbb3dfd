"""netflow under many short TCP connections: nginx + wrk with
`Connection: close` on loopback (every request its own connection) for
BENCH_SECONDS (60 by default) with the collector's interval as long
(httpflow off). Closed-connection records are merged in steps during the
interval, so the collector's memory must not grow with the interval or
the rate, and nothing may be lost.

    python3 perf/bench_netflow_closed.py     (BENCH_SECONDS=60, BENCH_CONNS=64)

Prints `name: value` lines: connections/s wrk made, tcp_closed the points
report on each side against the connections wrk made, every loss counter,
the collector's RSS growth (max during the run minus after start, and at
each quarter of the run), and its CPU per 10k connections/s.
"""
import os
import re
import subprocess
import tempfile
import time

from collector import Collector
from support.nginx import Nginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 60))
CONNS = int(os.environ.get("BENCH_CONNS", 64))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024


def tcp_closed(points_file, port):
    """tcp_closed in the netflow points of a server port, per direction."""
    closed = {"outgoing": 0, "incoming": 0}
    for line in open(points_file):
        if line.startswith("netflow,") and (f"dst_port={port}," in line or f"src_port={port}," in line):
            d = re.search(r"direction=(\w+)", line).group(1)
            closed[d] += int(re.search(r"tcp_closed=(\d+)i", line).group(1))
    return closed


def main():
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp, workers=2) as ngx:
        with Collector(tmp, "closed", ["--enabled", "ebpf-net", "--l7net-disabled", "httpflow"],
                       interval=f"{SECONDS}s") as c:
            rss0, c0 = rss_mb(c.pid), c.cpu_seconds()
            wrk = subprocess.Popen(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "-H", "Connection: close",
                                    f"http://127.0.0.1:{ngx.port}/ok"], stdout=subprocess.PIPE, text=True)
            samples = []  # RSS every 0.5 s while wrk runs
            while wrk.poll() is None:
                samples.append(rss_mb(c.pid))
                time.sleep(0.5)
            text = wrk.stdout.read()
            cpu = c.cpu_seconds() - c0
            m = c.metrics()
        # leaving the Collector stops it with SIGTERM, which flushes the interval
        total = int(re.search(r"(\d+) requests in", text).group(1))
        errors = re.search(r"Socket errors: (.*)", text)
        closed = tcp_closed(c.out, ngx.port)
        lost = {k: int(v) for (p, k), v in m.items()
                if p == "ebpf-net/netflow" and ("lost" in k or "kernel_drop" in k)}
        print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s, Connection: close, nginx 2 workers, loopback; "
              f"collector --interval {SECONDS}s")
        print(f"connections: {total}" + (f" (wrk socket errors: {errors.group(1)})" if errors else ""))
        print(f"closed_connections_per_s: {total / SECONDS:.0f}")
        print(f"tcp_closed_reported_client_side: {closed['outgoing']}")
        print(f"tcp_closed_reported_server_side: {closed['incoming']}")
        print(f"events_lost: {sum(lost.values())} {lost}")
        print(f"early_steps: {int(m.get(('ebpf-net/netflow', 'early_steps'), 0))}")
        print(f"collector_rss_start_mb: {rss0:.1f}")
        print(f"collector_rss_growth_mb: {max([rss0] + samples) - rss0:.1f}")
        # flat once the first steps ran: the growth does not follow the interval
        quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] - rss0 for q in (1, 2, 3, 4)]
        print("collector_rss_growth_mb_at_25_50_75_100pct: " + " ".join(f"{g:.1f}" for g in quarters))
        print(f"collector_cpu_cores: {cpu / SECONDS:.3f}")
        print(f"collector_cpu_per_10k_conns_per_s: {cpu / SECONDS / (total / SECONDS / 1e4):.3f}")


if __name__ == "__main__":
    main()

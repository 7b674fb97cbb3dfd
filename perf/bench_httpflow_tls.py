"""End-to-end cost of httpflow-tls: nginx serving HTTPS and wrk (both link
OpenSSL, so both ends pass through the uprobes) on loopback, in the same
run, rounds alternating: collector off, httpflow alone (socket capture: sees
ciphertext only, must report nothing here), httpflow + httpflow-tls. Needs
root, nginx, wrk, openssl.

Prints the median over rounds of wrk's requests/s and mean latency as
ratios against `off` of the same round, the collector's CPU per 10k
requests/s, and for httpflow-tls the requests reported per end against
wrk's count and the records lost (kernel_drop_tls_events_ring_full).

    python3 perf/bench_httpflow_tls.py      (BENCH_SECONDS=10, BENCH_CONNS=32, BENCH_ROUNDS=3)

Prints `name: value` lines.
"""
import os
import statistics
import tempfile
import time

from collector import Collector, wrk as wrk_url
from support.tls_nginx import TlsNginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
CONNS = int(os.environ.get("BENCH_CONNS", 32))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
H = "ebpf-net/httpflow-tls"


def wrk(url):
    return wrk_url(url, SECONDS, CONNS)


def run_with_collector(tmp, url, port, name, l7):
    with Collector(tmp, name, ["--enabled", "ebpf-net", "--l7net-enabled", l7]) as c:
        time.sleep(1)
        c0 = c.cpu_seconds()
        rps, lat, total = wrk(url)
        cpu = c.cpu_seconds() - c0
        time.sleep(4)  # two more intervals: the last exchanges (connection ends) reported
        m = c.metrics()
    return rps, lat, total, cpu, m, c.reported_requests(port)


def main():
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        srv = TlsNginx(tmp).start()
        try:
            url = srv.url("/tls/ok")
            wrk(url)  # warm-up
            print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s https, nginx 1 worker TLS, loopback; {ROUNDS} rounds")
            for r in range(ROUNDS):
                off = wrk(url)
                res.setdefault("off", []).append(off)
                for name, l7 in (("httpflow", "httpflow"), ("httpflow_tls", "httpflow,httpflow-tls")):
                    rps, lat, total, cpu, m, reported = run_with_collector(tmp, url, srv.port, f"{name}-{r}", l7)
                    lost = int(m.get((H, "kernel_drop_tls_events_ring_full"), 0))
                    res.setdefault(name, []).append((rps / off[0], lat / off[1], cpu / SECONDS / (rps / 1e4)))
                    print(f"round {r} {name}: {rps:.0f} req/s ({rps / off[0]:.3f}), latency {lat / off[1]:.3f}, "
                          f"wrk requests {total}, reported per end {reported / 2:.0f}, lost {lost}", flush=True)
        finally:
            srv.stop()
    print(f"off_requests_per_s: {statistics.median(x[0] for x in res['off']):.0f}")
    for name in ("httpflow", "httpflow_tls"):
        runs = res[name]
        print(f"{name}_throughput_ratio: {statistics.median(x[0] for x in runs):.3f}")
        print(f"{name}_latency_ratio: {statistics.median(x[1] for x in runs):.3f}")
        print(f"{name}_collector_cpu_per_10k_rps: {statistics.median(x[2] for x in runs):.4f}")
    print(f"load_average: {os.getloadavg()}")


if __name__ == "__main__":
    main()

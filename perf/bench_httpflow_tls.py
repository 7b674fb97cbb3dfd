"""End-to-end cost of httpflow-tls: nginx serving HTTPS and wrk (both link
OpenSSL, so both ends pass through the uprobes) on loopback, with the
collector off, with httpflow alone (syscall capture: sees ciphertext only,
must report nothing here) and with httpflow + httpflow-tls. Needs root,
nginx, wrk, openssl.

Reports per mode wrk's requests/s and mean latency as ratios against the
run without the collector, the collector's CPU (user + system, from
/proc/<pid>/stat) per 10k requests/s, and for httpflow-tls the records the
kernel sent, the requests reported per side and every loss counter.

    python3 perf/bench_httpflow_tls.py      (BENCH_SECONDS=10, BENCH_CONNS=32)

Prints `name: value` lines.
"""
import os
import tempfile
import time

from collector import Collector, wrk as wrk_url
from support.tls_nginx import TlsNginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
CONNS = int(os.environ.get("BENCH_CONNS", 32))


def wrk(url):
    return wrk_url(url, SECONDS, CONNS)


def run_with_collector(tmp, url, port, l7):
    with Collector(tmp, l7, ["--enabled", "ebpf-net", "--l7net-enabled", l7]) as c:
        c0 = c.cpu_seconds()
        rps, lat, total = wrk(url)
        cpu = c.cpu_seconds() - c0
        time.sleep(4)  # two more intervals: every pair settled and reported
        m = c.metrics()
    return rps, lat, total, cpu, m, c.reported_requests(port)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        srv = TlsNginx(tmp).start()
        try:
            url = srv.url("/tls/ok")
            wrk(url)  # warm-up
            base_rps, base_lat, _ = wrk(url)
            print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s https, nginx 1 worker TLS, loopback")
            print(f"off_requests_per_s: {base_rps:.0f}")
            print(f"off_latency_ms: {base_lat * 1e3:.3f}")
            for name, l7 in (("httpflow", "httpflow"), ("httpflow_tls", "httpflow,httpflow-tls")):
                rps, lat, total, cpu, m, reported = run_with_collector(tmp, url, srv.port, l7)
                print(f"{name}_requests_per_s: {rps:.0f}")
                print(f"{name}_throughput_ratio: {rps / base_rps:.3f}")
                print(f"{name}_latency_ratio: {lat / base_lat:.3f}")
                print(f"{name}_collector_cpu_cores: {cpu / SECONDS:.3f}")
                print(f"{name}_collector_cpu_per_10k_rps: {cpu / SECONDS / (rps / 1e4):.3f}")
                print(f"{name}_wrk_requests: {total}")
                print(f"{name}_requests_reported_each_side: {reported / 2:.0f}")
                if name == "httpflow_tls":
                    h = "ebpf-net/httpflow-tls"
                    lost = {k: int(v) for (p, k), v in m.items()
                            if p == h and ("lost" in k or "kernel_drop" in k) and v}
                    print(f"httpflow_tls_records_received: {int(m.get((h, 'ring_events_received'), 0))}")
                    print(f"httpflow_tls_events_lost: {sum(lost.values())} {lost}")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()

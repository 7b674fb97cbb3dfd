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
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from support.nginx import free_port  # noqa: E402
from support.tls_nginx import TlsNginx  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
CONNS = int(os.environ.get("BENCH_CONNS", 32))
TICK = os.sysconf("SC_CLK_TCK")


def wrk(url):
    out = subprocess.run(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat, unit = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out).groups()
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, float(lat) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit], total


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'dkebpf_plugin_(\w+)\{plugin="([^"]+)"\} ([\d.e+]+)', line)
        if m:
            out[(m.group(2), m.group(1))] = float(m.group(3))
    return out


def run_with_collector(tmp, url, port, l7):
    mport = free_port()
    out = os.path.join(tmp, f"points-{l7}.lp")
    log = os.path.join(tmp, f"dkebpf-{l7}.log")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "dkebpf", "run", "--enabled", "ebpf-net", "--interval", "2s",
                             "--l7net-enabled", l7, "--output", out, "--log", log, "--pprof-port", str(mport)],
                            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while "dkebpf started" not in (open(log).read() if os.path.exists(log) else ""):
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"collector did not start: {open(log).read() if os.path.exists(log) else ''}")
            time.sleep(0.1)
        c0 = cpu_seconds(proc.pid)
        rps, lat, total = wrk(url)
        cpu = cpu_seconds(proc.pid) - c0
        time.sleep(4)  # two more intervals: every pair settled and reported
        m = metrics(mport)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    reported = 0
    if os.path.exists(out):
        for line in open(out):
            if line.startswith("httpflow,") and f"server_port={port}," in line:
                reported += int(re.search(r"count=(\d+)i", line).group(1))
    return rps, lat, total, cpu, m, reported


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

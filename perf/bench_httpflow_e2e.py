"""End-to-end cost of httpflow on a busy HTTP server: nginx on loopback
loaded by wrk, with the collector off and on, in alternating rounds in this
one process (the machine's noise hits both sides alike).

Prints, per round and as the median over rounds:
  - requests/s with the collector on / off (1.0 = no cost),
  - mean latency on / off,
  - collector CPU (cores) per 10k requests/s served,
  - requests lost: requests wrk completed minus requests counted in the
    httpflow points of the server side (must be 0), and the collector's own
    kernel/ring drop counters.
Needs root, nginx and wrk (Debian packages nginx-light, wrk).

    sudo .venv/bin/python perf/bench_httpflow_e2e.py [--rounds 3] [--seconds 10] [--connections 16]
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ root {tmp}/www; }}
    }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# loopback only: never through a proxy from the environment
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_http(url, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            OPENER.open(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def start_nginx(tmp):
    port = free_port()
    os.chmod(tmp, 0o755)  # nginx's worker runs unprivileged and reads www/
    os.makedirs(os.path.join(tmp, "www"), exist_ok=True)
    with open(os.path.join(tmp, "www", "index.html"), "w") as f:
        f.write("hello from nginx\n" * 8)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=port))
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/index.html")
    return proc, port


WRK_REQS = re.compile(r"(\d+) requests in")
WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_LAT = re.compile(r"Latency\s+([\d.]+)(us|ms|s)")


def run_wrk(port, seconds, connections):
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s",
                          f"http://127.0.0.1:{port}/index.html"],
                         capture_output=True, text=True, check=True).stdout
    lat, unit = WRK_LAT.search(out).groups()
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
    return int(WRK_REQS.search(out).group(1)), float(WRK_RPS.search(out).group(1)), float(lat) * scale


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port):
    text = OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


class Collector:
    def __init__(self, tmp):
        self.tmp = tmp
        self.out = os.path.join(tmp, "points.lp")
        self.log = os.path.join(tmp, "dkebpf.log")
        self.pprof = free_port()
        self.proc = None

    def start(self):
        for p in (self.out, self.log):
            if os.path.exists(p):
                os.unlink(p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dkebpf", "run", "--enabled", "ebpf-net", "--l7net-enabled", "httpflow",
             "--interval", "2s", "--output", self.out, "--log", self.log, "--log-level", "info",
             "--pprof-port", str(self.pprof)], cwd=self.tmp, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dkebpf exited {self.proc.returncode}: {self.proc.stderr.read()}")
            if os.path.exists(self.log) and "dkebpf started" in open(self.log).read():
                return
            time.sleep(0.1)
        raise RuntimeError("dkebpf did not start")

    def stop(self):
        metrics = scrape(self.pprof)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        return metrics

    def server_requests(self, port):
        """Requests counted on the server side (nginx, incoming) of our port."""
        total = 0
        with open(self.out) as f:
            for line in f:
                if not line.startswith("httpflow,"):
                    continue
                head = line.split(" ", 1)[0]
                if "direction=incoming" in head and f"src_port={port}," in head + ",":
                    total += int(re.search(r"\bcount=(\d+)i", line).group(1))
        return total


def lost_counters(metrics):
    return {k: v for k, v in metrics.items()
            if ("drop" in k or "lost" in k) and "httpflow" in k and v}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install nginx-light wrk")
    rps_ratio, lat_ratio, cpu_per_10k, lost_total = [], [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        nginx, port = start_nginx(tmp)
        col = Collector(tmp)
        try:
            run_wrk(port, 2, args.connections)  # warm-up
            for r in range(args.rounds):
                _, rps_off, lat_off = run_wrk(port, args.seconds, args.connections)
                col.start()
                time.sleep(1)
                cpu0, t0 = cpu_seconds(col.proc.pid), time.monotonic()
                reqs_on, rps_on, lat_on = run_wrk(port, args.seconds, args.connections)
                cores = (cpu_seconds(col.proc.pid) - cpu0) / (time.monotonic() - t0)
                time.sleep(3)  # let the last interval with wrk's requests flush
                metrics = col.stop()
                counted = col.server_requests(port)
                lost = reqs_on - counted
                lost_total += max(lost, 0)
                rps_ratio.append(rps_on / rps_off)
                lat_ratio.append(lat_on / lat_off)
                cpu_per_10k.append(cores / (rps_on / 10_000))
                print(f"round {r + 1}: off {rps_off:.0f} req/s {lat_off * 1e6:.0f} us | "
                      f"on {rps_on:.0f} req/s {lat_on * 1e6:.0f} us, collector {cores:.3f} cores | "
                      f"wrk {reqs_on} requests, httpflow counted {counted} (lost {lost}) "
                      f"drop counters {lost_counters(metrics) or 0}", flush=True)
        finally:
            if col.proc is not None and col.proc.poll() is None:
                col.proc.kill()
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
    print(f"requests/s on/off (median): {statistics.median(rps_ratio):.3f}")
    print(f"latency on/off (median): {statistics.median(lat_ratio):.3f}")
    print(f"collector cores per 10k req/s (median): {statistics.median(cpu_per_10k):.3f}")
    print(f"requests lost (all rounds): {lost_total}")
    return 1 if lost_total else 0


if __name__ == "__main__":
    sys.exit(main())

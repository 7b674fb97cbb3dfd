"""Memory of the collector, idle and at full speed, per plugin group and
interval: VmRSS, VmHWM (peak) and anonymous memory (RssAnon) from
/proc/<pid>/status, read from outside every second, and at the end the
collector's own breakdown of what holds it (dkebpf_memory_bytes in
/metrics: ring buffer and map mmaps, reader buffers, carried records,
caches, libraries). Needs root, nginx, wrk (and openssl for the TLS group).

Per group and interval: start the collector, let it sit IDLE_S, read the
idle figures; then wrk -t2 -c32 (nginx 1 worker on loopback; HTTPS for the
httpflow-tls group, both ends link OpenSSL) for BENCH_SECONDS while
sampling. "Flat" is anonymous memory at the end minus at the first fifth
of the load (minute 1 of a 5-minute run): no growth means no
accumulation.

The libraries' resident pages depend on the page cache (how large the
folios of libarrow's file are: the same build reads 50 or 80 MiB for
`import numpy, pyarrow`), so each run first measures that baseline, a
process that only imports numpy and pyarrow, and prints the collector's
idle VmRSS over it too: what is the collector's own.

    python3 perf/bench_memory.py                 (BENCH_SECONDS=300: the 5-minute runs)
    BENCH_SECONDS=30 BENCH_GROUPS=net BENCH_INTERVALS=10s python3 perf/bench_memory.py

Prints `name: value` lines (MB = 2^20 bytes).
"""
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from collector import Collector, wrk
from support.nginx import Nginx
from support.tls_nginx import TlsNginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 300))
CONNS = int(os.environ.get("BENCH_CONNS", 32))
IDLE_S = 5
GROUPS = {
    "net": ["--enabled", "ebpf-net"],  # netflow + dnsflow + httpflow
    "net_tls": ["--enabled", "ebpf-net", "--l7net-enabled", "httpflow,httpflow-tls"],
    "net_bash_conntrack": ["--enabled", "ebpf-net,ebpf-bash,ebpf-conntrack"],
}
SELECTED = os.environ.get("BENCH_GROUPS", ",".join(GROUPS)).split(",")
INTERVALS = os.environ.get("BENCH_INTERVALS", "10s,60s").split(",")
MB = 1 << 20


def parse_status(text):
    """VmRSS, VmHWM, RssAnon, RssFile in bytes from the text of /proc/<pid>/status."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def status(pid):
    """VmRSS, VmHWM, RssAnon, RssFile of a process in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return parse_status(f.read())


def baseline():
    """status() of a process that only imports numpy and pyarrow, read
    while it is alive: the floor under the collector's VmRSS."""
    code = "import numpy, pyarrow, sys; sys.stdout.write(open('/proc/self/status').read())"
    return parse_status(subprocess.check_output([sys.executable, "-c", code], text=True))


def breakdown(port):
    """{holder: bytes} from dkebpf_memory_bytes and dkebpf_plugin_memory_bytes in the collector's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for m in re.finditer(r'^dkebpf_(?:plugin_)?memory_bytes\{holder="([^"]+)"(?:,plugin="([^"]+)")?\} (\d+)', text, re.M):
        out[m.group(1) if not m.group(2) else f"{m.group(2)}:{m.group(1)}"] = int(m.group(3))
    return out


def run(tmp, group, interval, url, base):
    name = f"{group}_{interval}"
    with Collector(tmp, name, GROUPS[group], interval=interval) as c:
        time.sleep(IDLE_S)
        idle = status(c.pid)
        idle_breakdown = breakdown(c.metrics_port)
        result = {}
        load = threading.Thread(target=lambda: result.update(rps=wrk(url, SECONDS, CONNS)[0]))
        c0, t0 = c.cpu_seconds(), time.monotonic()
        load.start()
        samples = []
        while load.is_alive():
            samples.append((time.monotonic() - t0, status(c.pid)))
            load.join(1.0)
        cpu = c.cpu_seconds() - c0
        end = status(c.pid)
        busy_breakdown = breakdown(c.metrics_port)
        lost = {k: int(v) for (p, k), v in c.metrics().items() if v and ("lost" in k or "drop" in k
                                                                            or "evicted" in k)}
    first_fifth = [s for t, s in samples if t <= SECONDS / 5] or [samples[0][1]]
    print(f"{name}_idle_rss_mb: {idle['VmRSS'] / MB:.1f}")
    print(f"{name}_idle_anon_mb: {idle['RssAnon'] / MB:.1f}")
    print(f"{name}_idle_file_mb: {idle['RssFile'] / MB:.1f}")
    print(f"{name}_idle_rss_over_baseline_mb: {(idle['VmRSS'] - base['VmRSS']) / MB:.1f}")
    print(f"{name}_load_requests_per_s: {result.get('rps', 0):.0f}")
    print(f"{name}_load_cpu_cores: {cpu / SECONDS:.3f}")
    print(f"{name}_load_rss_max_mb: {max(s['VmRSS'] for _, s in samples) / MB:.1f}")
    print(f"{name}_peak_hwm_mb: {end['VmHWM'] / MB:.1f}")
    print(f"{name}_load_anon_max_mb: {max(s['RssAnon'] for _, s in samples) / MB:.1f}")
    print(f"{name}_anon_at_fifth_mb: {first_fifth[-1]['RssAnon'] / MB:.1f}")
    print(f"{name}_anon_at_end_mb: {end['RssAnon'] / MB:.1f}")
    print(f"{name}_anon_growth_mb: {(end['RssAnon'] - first_fifth[-1]['RssAnon']) / MB:+.1f}")
    print(f"{name}_dropped: {lost}")
    for label, b in (("idle", idle_breakdown), ("load", busy_breakdown)):
        print(f"{name}_{label}_breakdown_mb: " + " ".join(f"{k}={v / MB:.1f}" for k, v in sorted(b.items())))


def main():
    print(f"load: wrk -t2 -c{CONNS} for {SECONDS}s, nginx 1 worker, loopback; idle read after {IDLE_S}s")
    base = baseline()
    print(f"baseline_numpy_pyarrow_rss_mb: {base['VmRSS'] / MB:.1f}")
    print(f"baseline_numpy_pyarrow_anon_mb: {base['RssAnon'] / MB:.1f}")
    print(f"loadavg: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tls = TlsNginx(os.path.join(tmp, "tls"))
        os.makedirs(tls.tmp)
        with Nginx(tmp) as ngx:
            try:
                if "net_tls" in SELECTED:
                    tls.start()
                for group in SELECTED:
                    url = tls.url("/tls/ok") if group == "net_tls" else f"http://127.0.0.1:{ngx.port}/ok"
                    for interval in INTERVALS:
                        run(tmp, group, interval, url, base)
                        print(f"loadavg: {os.getloadavg()[0]:.1f}")
            finally:
                tls.stop()


if __name__ == "__main__":
    main()

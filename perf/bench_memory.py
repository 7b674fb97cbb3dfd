"""Memory of the collector, idle and at full speed, per plugin group and
interval: VmRSS, VmHWM (peak) and anonymous memory (RssAnon) from
/proc/<pid>/status, read from outside every second, and at the end the
collector's own breakdown of what holds it (dkebpf_memory_bytes in
/metrics: ring buffer and map mmaps, reader buffers, carried records,
caches, libraries). Needs root, nginx, wrk (and openssl for the TLS group).

Per group and interval: start the collector, read the idle figures once
it has flushed its first interval (what a flush leaves is part of idle); then wrk -t2 -c32 (nginx 1 worker on loopback; HTTPS for the
httpflow-tls group, both ends link OpenSSL) for BENCH_SECONDS while
sampling; then idle again, two flushes after the load (what stays
resident between flushes in the long run), and the collector's page
faults per interval under load. "Flat" is anonymous memory at the end minus at the first fifth
of the load (minute 1 of a 5-minute run): no growth means no
accumulation.

The libraries' resident pages depend on the page cache (how large the
folios of libarrow's file are: the same build reads 50 or 80 MiB for
`import numpy, pyarrow`), so each run first measures that baseline, a
process that only imports numpy and pyarrow, and prints the collector's
idle VmRSS over it too: what is the collector's own. For the baseline,
idle and the end of the load it also prints where the RSS is, from
/proc/<pid>/smaps: the rings (BPF map mmaps: the kernel maps a ring's
every page at mmap, touched or not), the heap and anonymous mappings, the
largest libraries by file; and the share of file-backed RSS in large
page-cache folios (/proc/<pid>/pagemap + /proc/kpageflags: a fault maps a
whole folio, up to ~1 MiB, so a library's RSS depends on how its file was
read into the cache, not on what the process touched).

    python3 perf/bench_memory.py                 (BENCH_SECONDS=300: the 5-minute runs)
    BENCH_SECONDS=30 BENCH_GROUPS=net BENCH_INTERVALS=10s python3 perf/bench_memory.py

Prints `name: value` lines (MB = 2^20 bytes).
"""
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from collector import Collector, wrk
from dkebpf import procmem
from support.nginx import Nginx
from support.tls_nginx import TlsNginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 300))
CONNS = int(os.environ.get("BENCH_CONNS", 32))
GROUPS = {
    "net": ["--enabled", "ebpf-net"],  # netflow + dnsflow + httpflow
    "net_tls": ["--enabled", "ebpf-net", "--l7net-enabled", "httpflow,httpflow-tls"],
    "net_bash_conntrack": ["--enabled", "ebpf-net,ebpf-bash,ebpf-conntrack"],
}
SELECTED = os.environ.get("BENCH_GROUPS", ",".join(GROUPS)).split(",")
INTERVALS = os.environ.get("BENCH_INTERVALS", "10s,60s").split(",")
MB = 1 << 20


def status(pid):
    """VmRSS, VmHWM, RssAnon, RssFile of a process in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return procmem.status_sizes(f.read())


RING_MAPPING = "anon_inode:bpf-map"  # ring buffers (and the small mmapable array maps)
TOP_LIBRARIES = 12
PAGE = os.sysconf("SC_PAGE_SIZE")
PM_PRESENT, PFN_MASK = 1 << 63, (1 << 55) - 1  # /proc/PID/pagemap
KPF_COMPOUND = (1 << 15) | (1 << 16)  # /proc/kpageflags: head or tail of a large folio


def mappings(pid):
    """[(start, end, path, rss bytes)] of the process's mappings (path "" when anonymous)."""
    return [(start, end, path, sizes.get("Rss", 0)) for start, end, _, path, sizes in procmem.mappings(f"/proc/{pid}/smaps")]


def rss_groups(maps):
    """{group: RSS bytes}: "rings" (BPF map mmaps), "heap_anon" (the heap and
    anonymous mappings: arrays, Python objects, thread stacks), "other"
    ([stack], [vdso]...), "packet_rings" (TPACKET rings) and one "lib:<file>" per mapped file (its
    copy-on-write data included)."""
    out = {}
    for _, _, path, rss in maps:
        group = ("rings" if path == RING_MAPPING else "heap_anon" if path in ("", "[heap]")
                 else "packet_rings" if path.startswith("socket:")
                 else "lib:" + os.path.basename(path.removesuffix(" (deleted)")) if path.startswith("/")
                 else "other")
        out[group] = out.get(group, 0) + rss
    return out


def file_rss_in_large_folios(pid, maps):
    """(bytes of file-backed resident pages, of which in large folios): the
    kernel maps a whole page-cache folio (up to ~1 MiB here) on a fault, so
    a library's RSS depends on how its file was read into the cache.
    Reads /proc/<pid>/pagemap and /proc/kpageflags (root)."""
    total = large = 0
    with open(f"/proc/{pid}/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
        for start, end, path, rss in maps:
            if not path.startswith("/") or not rss:
                continue
            pm.seek(start // PAGE * 8)
            entries = struct.unpack(f"{(end - start) // PAGE}Q", pm.read((end - start) // PAGE * 8))
            for e in entries:
                if e & PM_PRESENT:
                    total += PAGE
                    kf.seek((e & PFN_MASK) * 8)
                    if struct.unpack("Q", kf.read(8))[0] & KPF_COMPOUND:
                        large += PAGE
    return total, large


def print_rss_breakdown(label, pid):
    """`<label>_smaps_mb: group=MiB ...` (the rings, heap and anonymous, the
    TOP_LIBRARIES largest files, the rest of the files together) and the
    share of file-backed RSS that is in large folios."""
    maps = mappings(pid)
    groups = rss_groups(maps)
    libs = sorted(((v, k) for k, v in groups.items() if k.startswith("lib:")), reverse=True)
    rest = sum(v for v, _ in libs[TOP_LIBRARIES:])
    shown = [(k, groups.get(k, 0)) for k in ("rings", "packet_rings", "heap_anon", "other")]
    shown += [(k, v) for v, k in libs[:TOP_LIBRARIES]] + [(f"lib:{len(libs) - TOP_LIBRARIES} others", rest)]
    print(f"{label}_smaps_mb: " + " ".join(f"{k}={v / MB:.1f}" for k, v in shown))
    file_rss, large = file_rss_in_large_folios(pid, maps)
    print(f"{label}_file_rss_mb: {file_rss / MB:.1f}")
    print(f"{label}_file_rss_in_large_folios_share: {large / file_rss if file_rss else 0:.2f}")


def baseline(label=None):
    """status() of a process that only imports numpy and pyarrow, read
    while it is alive: the floor under the collector's VmRSS (and its
    print_rss_breakdown under `label`, when given)."""
    code = ("import numpy, os, pyarrow, sys; sys.stdout.write(open('/proc/self/status').read()); "
            "sys.stdout.flush(); os.close(1); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out = procmem.status_sizes(p.stdout.read())
        if label:
            print_rss_breakdown(label, p.pid)
    finally:
        p.stdin.close()
        p.wait()
    return out


def metrics_text(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def flushes(port):
    """Intervals the collector has flushed (dkebpf_flushes_total)."""
    return int(re.search(r"^dkebpf_flushes_total (\d+)", metrics_text(port), re.M).group(1))


def page_faults(pid):
    """Minor + major page faults of a process so far (/proc/<pid>/stat):
    what the libraries' pages faulting back in after a release cost."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[7]) + int(fields[9])  # minflt, majflt


def wait_flushes(port, count, interval_s):
    """Until the collector has flushed `count` intervals (and freed what it
    held for them): its idle memory includes what a flush leaves."""
    end = time.monotonic() + count * interval_s + 30
    while flushes(port) < count:
        if time.monotonic() > end:
            raise SystemExit(f"bench_memory: the collector did not flush {count} intervals")
        time.sleep(0.5)
    time.sleep(1)


def breakdown(port):
    """{holder: bytes} from dkebpf_memory_bytes and dkebpf_plugin_memory_bytes in the collector's /metrics."""
    text = metrics_text(port)
    out = {}
    for m in re.finditer(r'^dkebpf_(?:plugin_)?memory_bytes\{holder="([^"]+)"(?:,plugin="([^"]+)")?\} (\d+)', text, re.M):
        out[m.group(1) if not m.group(2) else f"{m.group(2)}:{m.group(1)}"] = int(m.group(3))
    return out


def run(tmp, group, interval, url, base):
    name = f"{group}_{interval}"
    interval_s = int(interval[:-1]) * (60 if interval.endswith("m") else 1)
    with Collector(tmp, name, GROUPS[group], interval=interval) as c:
        wait_flushes(c.metrics_port, 1, interval_s)
        idle = status(c.pid)
        idle_breakdown = breakdown(c.metrics_port)
        print_rss_breakdown(f"{name}_idle", c.pid)
        result = {}
        load = threading.Thread(target=lambda: result.update(rps=wrk(url, SECONDS, CONNS)[0]))
        c0, t0, f0, n0 = c.cpu_seconds(), time.monotonic(), page_faults(c.pid), flushes(c.metrics_port)
        load.start()
        samples = []
        while load.is_alive():
            samples.append((time.monotonic() - t0, status(c.pid)))
            load.join(1.0)
        cpu = c.cpu_seconds() - c0
        faults, intervals = page_faults(c.pid) - f0, flushes(c.metrics_port) - n0
        end = status(c.pid)
        busy_breakdown = breakdown(c.metrics_port)
        print_rss_breakdown(f"{name}_end", c.pid)
        # idle again, two flushes after the load: what stays resident
        # between flushes in the long run, not only after the first one
        # (sampled every second: the max includes the flushes themselves)
        idle_samples, until = [], flushes(c.metrics_port) + 2
        while flushes(c.metrics_port) < until:
            idle_samples.append(status(c.pid))
            time.sleep(1)
        time.sleep(1)
        steady = status(c.pid)
        print_rss_breakdown(f"{name}_idle_after_load", c.pid)
        lost = {k: int(v) for (p, k), v in c.metrics().items() if v and ("lost" in k or "drop" in k
                                                                            or "evicted" in k)}
    first_fifth = [s for t, s in samples if t <= SECONDS / 5] or [samples[0][1]]
    print(f"{name}_idle_rss_mb: {idle['VmRSS'] / MB:.1f}")
    print(f"{name}_idle_anon_mb: {idle['RssAnon'] / MB:.1f}")
    print(f"{name}_idle_file_mb: {idle['RssFile'] / MB:.1f}")
    print(f"{name}_idle_rss_over_baseline_mb: {(idle['VmRSS'] - base['VmRSS']) / MB:.1f}")
    for key, label in (("VmRSS", "rss"), ("RssAnon", "anon"), ("RssFile", "file")):
        print(f"{name}_idle_after_load_{label}_mb: {steady[key] / MB:.1f}")
    print(f"{name}_idle_after_load_rss_median_mb: {sorted(s['VmRSS'] for s in idle_samples)[len(idle_samples) // 2] / MB:.1f}")
    print(f"{name}_idle_after_load_rss_max_mb: {max(s['VmRSS'] for s in idle_samples) / MB:.1f}")
    print(f"{name}_load_requests_per_s: {result.get('rps', 0):.0f}")
    print(f"{name}_load_cpu_cores: {cpu / SECONDS:.3f}")
    print(f"{name}_load_page_faults_per_interval: {faults / max(intervals, 1):.0f} ({intervals} flushes)")
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
    print(f"load: wrk -t2 -c{CONNS} for {SECONDS}s, nginx 1 worker, loopback; idle read after the first flush")
    base = baseline("baseline_numpy_pyarrow")
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

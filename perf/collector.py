"""The one way the benchmarks run the collector and load it: the installed
`dkebpf run` (the venv's, `make install` builds it) in a directory of its
own, so the source tree, where no extension is built, is never imported.
Also the load generators and readings they share: wrk, CPU seconds of a
process, the plugin counters from /metrics. (Benches run as
`python3 perf/bench_*.py`, so this directory is on sys.path.)"""
import contextlib
import ctypes
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.request

# tests/support (servers, namespaces), never the source tree's dkebpf
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from support.nginx import free_port  # noqa: E402

START_TIMEOUT_S = 30
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_times(pid):
    """(user, system) CPU seconds of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def prog_stats(pid):
    """{prog_id: (run_cnt, run_time_ns, recursion_misses)} of the BPF
    programs whose fds pid holds: the fdinfo of a bpf-prog fd carries the
    kernel's counters (run_* inside bpf_stats())."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines())
        except OSError:
            continue
        out[int(info["prog_id"])] = (int(info["run_cnt"]), int(info["run_time_ns"]),
                                     int(info.get("recursion_misses", 0)))
    return out


BPF_SYSCALL = 321        # x86_64 __NR_bpf
BPF_ENABLE_STATS = 32    # enum bpf_cmd
BPF_STATS_RUN_TIME = 0   # enum bpf_stats_type


def stats_already_on():
    """Warn when BPF run-time stats are on before a benchmark starts (a
    `sysctl kernel.bpf_stats_enabled=1` left by hand or by another tool,
    or another bench's fd): every program run then reads the clock twice,
    which inflates every cost and ratio measured. Returns the value."""
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            on = int(f.read().strip() or 0)
    except OSError:
        return 0
    if on:
        print("warning: kernel.bpf_stats_enabled is 1 before the run: every BPF program reads the clock twice "
              "per run, costs and ratios below are inflated (sysctl -w kernel.bpf_stats_enabled=0 if nothing "
              "else needs it)")
    return on


@contextlib.contextmanager
def bpf_stats():
    """The kernel counts run_cnt/run_time_ns per program inside the block
    (which costs two clock reads per run, so ratios are measured without
    it). Held as a bpf(BPF_ENABLE_STATS) fd, not by writing the
    kernel.bpf_stats_enabled sysctl: the fds are counted, so a benchmark
    of another user that ends meanwhile and puts the sysctl back cannot
    stop the counting under this one (and this one's end none of theirs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(struct.pack("=I", BPF_STATS_RUN_TIME), 8)  # union bpf_attr .enable_stats
    fd = libc.syscall(BPF_SYSCALL, BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
    if fd < 0:
        raise SystemExit(f"bpf(BPF_ENABLE_STATS) failed: {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        os.close(fd)


def prog_names(ids):
    """prog_id -> "object:name" for the ids given, the object told by the
    maps a program uses (bpftool)."""
    def bpftool(*args):
        return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True,
                                         check=True).stdout)
    maps = {m["id"]: m.get("name", "") for m in bpftool("map", "show")}
    names = {}
    for p in bpftool("prog", "show"):
        if p["id"] in ids:
            used = {maps.get(i, "") for i in p.get("map_ids", [])}
            obj = "http" if used & {"http_conns", "calls"} else "tls" if any("tls" in u for u in used) else "netflow"
            names[p["id"]] = f"{obj}:{p.get('name', p['id'])}"
    return names


def prog_cost(before, after, requests):
    """[(object:name, runs per request, ns per run, ns per request)] of the
    programs that ran between two prog_stats() readings, costliest first."""
    names = prog_names(set(after))
    rows = []
    for pid_, (cnt, ns, _) in after.items():
        c0, n0, _ = before.get(pid_, (0, 0, 0))
        if cnt > c0:
            rows.append((names.get(pid_, str(pid_)), (cnt - c0) / requests, (ns - n0) / (cnt - c0),
                         (ns - n0) / requests))
    return sorted(rows, key=lambda r: -r[3])


def wrk(url, seconds, conns=32, args=()):
    """wrk -t2 (and args) against url: (requests/s, mean latency in s, requests)."""
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", *args, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat, unit = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out).groups()
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, float(lat) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit], total


PERF_DIR = os.path.dirname(os.path.abspath(__file__))


BPF_SRC_DIR = os.path.join(os.path.dirname(PERF_DIR), "bpf")


def build_bpf(name, out_dir, src_dir=PERF_DIR, defines=None, out=None):
    """Compile <src_dir>/<name>.bpf.c (by default a benchmark's own BPF
    program: a floor of empty programs, a ring producer; or a variant of
    one of the collector's, with -D defines) as setup.py compiles the
    collector's, with the project's bpf/ headers; returns the object's
    path (<out_dir>/<out or name>.bpf.o)."""
    obj = os.path.join(out_dir, f"{out or name}.bpf.o")
    subprocess.check_call(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
                           *(f"-D{k}={v}" for k, v in (defines or {}).items()),
                           "-I", BPF_SRC_DIR, "-c", os.path.join(src_dir, f"{name}.bpf.c"), "-o", obj])
    return obj


class Collector:
    """``with Collector(tmp, "name", ["--enabled", "ebpf-net"]) as c:`` runs
    `dkebpf run` with those flags, a 2 s interval, points to ``c.out``, log
    to ``c.log`` and the debug server on a free port, and returns once the
    log says "dkebpf started" (SystemExit with the log when it does not).
    Stopped with SIGTERM on leaving."""

    def __init__(self, tmp, name, args, interval="2s"):
        # files of their own per run: a "started" line of an earlier run
        # must not start the load before this collector is attached
        self.out = os.path.join(tmp, f"points-{name}.lp")
        self.log = os.path.join(tmp, f"dkebpf-{name}.log")
        self.metrics_port = free_port()
        self.cmd = [sys.executable, "-m", "dkebpf", "run", "--interval", interval, "--output", self.out,
                    "--log", self.log, "--pprof-port", str(self.metrics_port), *args]
        self.cwd = tmp
        self.proc = None

    def log_text(self):
        return open(self.log).read() if os.path.exists(self.log) else ""

    def __enter__(self):
        # PYTHONPATH made absolute: the collector runs in the temporary
        # directory, where a relative one (PYTHONPATH=. from the tree) would
        # silently give it the installed dkebpf instead of the tree's
        path = os.pathsep.join(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
        env = {**os.environ, **({"PYTHONPATH": path} if path else {})}
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + START_TIMEOUT_S
        while "dkebpf started" not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.__exit__()
                raise SystemExit(f"collector did not start: {self.log_text()}")
            time.sleep(0.1)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def cpu_seconds(self):
        return cpu_seconds(self.proc.pid)

    def cpu_times(self):
        return cpu_times(self.proc.pid)

    def prog_stats(self):
        return prog_stats(self.proc.pid)

    def metrics(self):
        """{(plugin, counter): value} from the debug server's /metrics."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r'dkebpf_plugin_(\w+)\{plugin="([^"]+)"\} ([\d.e+]+)', line)
            if m:
                out[(m.group(2), m.group(1))] = float(m.group(3))
        return out

    def reported_requests(self, server_port):
        """Requests counted in the httpflow points of a server port."""
        n = 0
        if os.path.exists(self.out):
            for line in open(self.out):
                if line.startswith("httpflow,") and f"server_port={server_port}," in line:
                    n += int(re.search(r"count=(\d+)i", line).group(1))
        return n

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

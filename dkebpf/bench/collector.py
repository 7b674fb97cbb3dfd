"""The collector under test: ``dkebpf run`` as a subprocess with the user's
flags, posting to a built-in receiver that counts the points delivered,
watched through /proc (CPU, RSS) and its ``/metrics`` (losses)."""
import gzip
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import DkebpfError

CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30

# Which /metrics counters are losses. Kernel: a BPF map or ring was full or
# a read failed (kernel_drop_*), a packet ring dropped (ring_kernel_drops).
# User space: points the output gave up on (output_points_dropped, the total
# of its reasons). (A full ring reader leaves records in the kernel ring, so
# they count as kernel_drop_* if that fills.)
KERNEL_LOSS = re.compile(r"kernel_drop|ring_kernel_drops$")
USER_LOSS = re.compile(r"^output_points_dropped$")
_SAMPLE = re.compile(r'^dkebpf_(\w+?)(?:\{plugin="([^"]*)"\})? ([-+0-9.eE]+|NaN)$')


class CollectorError(DkebpfError):
    """The collector under test did not start or died during a level."""


def parse_metrics(text):
    """{counter name (plugin/name for plugin counters): value} from the
    collector's Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            name, plugin, value = m.groups()
            if plugin:
                name = f"{plugin}/{name[len('plugin_'):] if name.startswith('plugin_') else name}"
            out[name] = float(value)
    return out


def losses(metrics):
    """({kernel loss counter: value}, {user-space loss counter: value})."""
    base = lambda k: k.rsplit("/", 1)[-1]  # noqa: E731
    kernel = {k: int(v) for k, v in metrics.items() if KERNEL_LOSS.search(base(k))}
    user = {k: int(v) for k, v in metrics.items() if USER_LOSS.search(base(k))}
    return kernel, user


class PointReceiver:
    """A DataKit write endpoint that only counts: lines of line protocol
    per POST /v1/write/<category>, gzip or not. ``points`` is the total."""

    def __init__(self):
        receiver = self
        self.points = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    try:
                        body = gzip.decompress(body)
                    except (OSError, EOFError, zlib.error):
                        self.send_response(400)
                        self.end_headers()
                        return
                n = sum(1 for line in body.split(b"\n") if line.strip())
                with receiver._lock:
                    receiver.points += n
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):  # /v1/ping
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.apiserver = "127.0.0.1:%d" % self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="bench-receiver",
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector:
    """``dkebpf run <flags>`` started for one level: ``start()`` returns once
    it logged "dkebpf started"; ``cpu()``/``rss()`` read /proc;
    ``metrics()`` scrapes /metrics; ``stop()`` sends SIGTERM (the collector
    flushes its last interval) and waits, leaving ``usage``."""

    def __init__(self, flags, apiserver, workdir, name):
        self.flags = list(flags)
        self.apiserver = apiserver
        self.log_path = os.path.join(workdir, f"collector-{name}.log")
        self.metrics_port = _free_port()
        self.proc = None
        self.usage = None

    def start(self):
        argv = [sys.executable, "-m", "dkebpf", "run", *self.flags,
                "--datakit-apiserver", self.apiserver, "--pprof-port", str(self.metrics_port),
                "--pprof-host", "127.0.0.1", "--log", self.log_path]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise CollectorError(f"the collector exited with status {self.proc.returncode} at start: "
                                     f"{self._why()}")
            if "dkebpf started" in self._log():
                return self
            time.sleep(0.1)
        self.stop()
        raise CollectorError(f"the collector did not start within {START_TIMEOUT_S} s (log: {self.log_path})")

    def _log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _why(self):
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        return (err.splitlines() or self._log().strip().splitlines() or ["no message"])[-1]

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise CollectorError(f"the collector exited with status {self.proc.returncode} during the "
                                 f"level: {self._why()}")

    def cpu(self):
        """(user, system) CPU seconds so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def metrics(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return parse_metrics(r.read().decode())

    def stop(self):
        """SIGTERM, then wait for the exit (killed after STOP_TIMEOUT_S);
        returns the exit status, None if it had to be killed. ``usage`` is
        then the collector's whole resource usage (wait4): its CPU includes
        the final flush, which /proc no longer shows once it is reaped."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_TIMEOUT_S
        killed = False
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > end and not killed:
                self.proc.kill()
                killed = True
            time.sleep(0.05)
        self.usage = usage
        self.proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        return None if killed else self.proc.returncode

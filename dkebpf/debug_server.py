"""A small HTTP debug endpoint: Prometheus metrics and Python thread stacks.

    GET /               short index
    GET /metrics        Prometheus text exposition format 0.0.4
    GET /debug/stacks   every Python thread's current stack, as plain text

The server runs in a daemon thread. A failing ``collect_metrics`` answers
500 and never stops the server. It speaks just enough HTTP/1.0 for these
GETs on socketserver: http.server would import http.client, email and ssl
(OpenSSL's libcrypto), ~7 MiB of RSS for a debugging aid.
"""
import logging
import math
import os
import re
import sys
import threading
import traceback
from collections import namedtuple
from socketserver import StreamRequestHandler, ThreadingTCPServer

from dkebpf import procmem
from dkebpf.errors import ConfigError

Metric = namedtuple("Metric", "name kind help samples")

PREFIX = "dkebpf_"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"

INDEX = ("dkebpf debug server\n"
         "  /metrics       Prometheus metrics\n"
         "  /debug/stacks  Python thread stacks\n")

REQUEST_TIMEOUT_S = 10
MAX_HEADER_LINES = 100
MAX_LINE_BYTES = 8192
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error"}

_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name):
    name = _BAD_NAME_CHARS.sub("_", str(name))
    if not name.startswith(PREFIX):
        name = PREFIX + name
    return name


def _label_name(name):
    name = _BAD_LABEL_CHARS.sub("_", str(name))
    if not name or name[0].isdigit():
        name = "_" + name
    return name


def _escape_label_value(value):
    return (str(value).replace("\\", "\\\\")
            .replace("\"", "\\\"")
            .replace("\n", "\\n"))


def _escape_help(text):
    return str(text).replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render_metrics(metrics):
    """Metrics (an iterable of Metric) as exposition format 0.0.4 text."""
    lines = []
    for metric in metrics:
        name = _metric_name(metric.name)
        kind = metric.kind if metric.kind in ("counter", "gauge") else "untyped"
        lines.append("# HELP %s %s" % (name, _escape_help(metric.help or "")))
        lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in metric.samples:
            if labels:
                text = ",".join('%s="%s"' % (_label_name(k), _escape_label_value(v))
                                for k, v in sorted(labels.items()))
                lines.append("%s{%s} %s" % (name, text, _format_value(value)))
            else:
                lines.append("%s %s" % (name, _format_value(value)))
    return "\n".join(lines) + "\n" if lines else ""


# /proc/self/status lines -> process metrics (name, help)
_STATUS_METRICS = {
    "VmRSS": ("process_resident_memory_bytes", "Resident memory size in bytes."),
    "VmHWM": ("process_resident_memory_peak_bytes", "Peak resident memory size in bytes."),
    "RssAnon": ("process_anonymous_memory_bytes",
                "Resident anonymous memory in bytes (heap, buffers; not shared with other processes)."),
}


def _status_bytes(path="/proc/self/status"):
    """{VmRSS|VmHWM|RssAnon: bytes} of this process (kB in the file)."""
    try:
        with open(path) as f:
            return procmem.status_sizes(f.read(), _STATUS_METRICS)
    except (OSError, ValueError, IndexError):
        return {}


def _mapping_holder(perms, name):
    """What a mapping of /proc/self/smaps holds, from its permissions and
    pathname."""
    if name.startswith("anon_inode:bpf"):
        # a ring buffer's producer page and data, read-only (mapped once by
        # RingReader: ext/includes/dk_ringbuf.h); writable: consumer pages,
        # mmapable arrays
        return "bpf_ring_buffers" if perms.startswith("r--") else "bpf_maps"
    if name.startswith("socket:"):
        return "packet_rings"  # TPACKET_V3 rings of packet sockets
    if not name or name.startswith("[heap]") or name.startswith("[anon"):
        return "anonymous"  # Python objects, numpy/arrow buffers, reader buffers
    if name.startswith("["):
        return "stack_and_kernel"  # [stack], [vvar], [vdso]
    if "/pyarrow/" in name or "libarrow" in name or "libparquet" in name:
        return "lib_pyarrow"
    if "/numpy" in name:
        return "lib_numpy"
    if "/dkebpf/" in name:
        return "lib_dkebpf"
    if "python3" in name:
        return "lib_python"
    return "lib_other"


def memory_breakdown(path="/proc/self/smaps"):
    """{holder: resident bytes} over the mappings of an smaps file: BPF
    ring buffers and maps (mmap'd by libbpf), packet rings, anonymous
    memory, and the shared libraries by package (their resident pages)."""
    out = {}
    try:
        maps = procmem.mappings(path)
    except (OSError, ValueError, IndexError):
        return {}
    for _, _, perms, path, sizes in maps:
        holder = _mapping_holder(perms, path)
        out[holder] = out.get(holder, 0) + sizes.get("Rss", 0)
    return out


def bpf_kernel_bytes(pid="self"):
    """Kernel memory of the BPF maps this process holds (ring buffers
    included): the `memlock` of each bpf-map fd's fdinfo. Not in RSS (only
    the rings, which are also mapped), but charged to the process's memory
    cgroup."""
    total = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-map":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("memlock:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # closed meanwhile
    return total


def process_metrics():
    """Metrics about this process, always served."""
    out = []
    for key, value in _status_bytes().items():
        name, text = _STATUS_METRICS[key]
        out.append(Metric(name, "gauge", text, [({}, value)]))
    holders = memory_breakdown()
    if "pyarrow" in sys.modules:  # never imported for this
        holders["arrow_pool"] = sys.modules["pyarrow"].total_allocated_bytes()
    holders["bpf_kernel"] = bpf_kernel_bytes()
    out.append(Metric("memory_bytes", "gauge",
                      "Resident bytes by holder (mappings of /proc/self/smaps; arrow_pool: pyarrow's "
                      "allocations, part of anonymous; bpf_kernel: kernel memory of the BPF maps and "
                      "rings, outside RSS but charged to the cgroup).",
                      [({"holder": k}, v) for k, v in sorted(holders.items())]))
    times = os.times()
    out.append(Metric("dkebpf_process_cpu_seconds_total", "counter",
                      "Total user and system CPU time spent in seconds.",
                      [({}, times.user + times.system)]))
    out.append(Metric("dkebpf_threads", "gauge",
                      "Number of live Python threads.",
                      [({}, threading.active_count())]))
    out.append(Metric("python_modules", "gauge", "Python modules imported.", [({}, len(sys.modules))]))
    return out


def format_stacks():
    """A plain-text dump of every Python thread's current stack."""
    threads = {t.ident: t for t in threading.enumerate()}
    parts = []
    for ident, frame in sorted(sys._current_frames().items()):
        thread = threads.get(ident)
        name = thread.name if thread is not None else "<unknown>"
        daemon = " daemon" if thread is not None and thread.daemon else ""
        parts.append("Thread %s (id %d%s):\n%s" % (
            name, ident, daemon, "".join(traceback.format_stack(frame))))
    return "\n".join(parts)


class _Handler(StreamRequestHandler):
    timeout = REQUEST_TIMEOUT_S  # a client that sends nothing does not hold a thread

    def handle(self):
        try:
            request = self.rfile.readline(MAX_LINE_BYTES + 1).decode("latin-1").split()
            for _ in range(MAX_HEADER_LINES):  # the headers: not needed, read to their end
                if self.rfile.readline(MAX_LINE_BYTES + 1) in (b"\r\n", b"\n", b""):
                    break
        except OSError:  # timeout, reset: nothing to answer
            return
        if len(request) != 3 or not request[2].startswith("HTTP/"):
            self._reply(400, TEXT_CONTENT_TYPE, "bad request line\n")
        elif request[0] != "GET":
            self._reply(405, TEXT_CONTENT_TYPE, "only GET\n")
        else:
            self._get(request[1].split("?", 1)[0])

    def _get(self, path):
        debug = self.server.debug_server
        debug.logger.debug("debug server: %s GET %s", self.client_address[0], path)
        if path == "/":
            self._reply(200, TEXT_CONTENT_TYPE, INDEX)
        elif path == "/metrics":
            try:
                metrics = list(debug.collect_metrics()) + process_metrics()
                body = render_metrics(metrics)
            except Exception as e:  # noqa: BLE001 - any failure is a 500
                debug.logger.warning("debug server: collecting metrics failed: %r", e)
                message = " ".join(("collecting metrics failed: %s: %s"
                                    % (type(e).__name__, e)).split())
                self._reply(500, TEXT_CONTENT_TYPE, message + "\n")
                return
            self._reply(200, METRICS_CONTENT_TYPE, body)
        elif path == "/debug/stacks":
            self._reply(200, TEXT_CONTENT_TYPE, format_stacks())
        else:
            self._reply(404, TEXT_CONTENT_TYPE, "not found: %s\n" % path)

    def _reply(self, code, content_type, text):
        body = text.encode("utf-8")
        head = ("HTTP/1.0 %d %s\r\nServer: dkebpf-debug\r\nContent-Type: %s\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n"
                % (code, REASONS[code], content_type, len(body)))
        try:
            self.wfile.write(head.encode("latin-1") + body)
        except OSError:  # the client left
            pass


class _Server(ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        self.debug_server.logger.debug(
            "debug server: error serving %s", client_address, exc_info=True)


class DebugServer:
    def __init__(self, host, port, collect_metrics, logger=None):
        self.host = host
        self.port = port
        self.collect_metrics = collect_metrics
        self.logger = logger or logging.getLogger(__name__)
        self._server = None
        self._thread = None

    def start(self):
        if self._server is not None:
            return
        try:
            server = _Server((self.host, self.port), _Handler)
        except (OSError, OverflowError, TypeError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise ConfigError('invalid pprof_port "%s": cannot listen on %s:%s: %s'
                              % (self.port, self.host, self.port, reason)) from None
        server.debug_server = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="dkebpf-debug-server", daemon=True)
        self._thread.start()
        self.logger.debug("debug server listening on %s:%d", self.host, self.port)

    def close(self):
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

"""``dkebpf linker``: the HTTP front of the span linker.

    POST /v1/bpftracing   spans from any number of collectors (line protocol
                          or an Arrow IPC stream, optionally gzip), answered
                          once they are on disk
    GET  /metrics         Prometheus counters (received, rejected, late,
                          orphan, dropped, sampled out, written, ...)

Linked spans go to DataKit as tracing data (``/v1/write/tracing``,
measurement ``dketrace``) through the project's HTTP sink, with its queue,
retries and spool.
"""
import argparse
import json
import logging
import signal
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from ..debug_server import METRICS_CONTENT_TYPE, Metric, process_metrics, render_metrics
from ..errors import ConfigError
from .ingest import ARROW_STREAM, parse_spans, read_arrow
from .windows import Windows

__all__ = ["Linker", "main"]

log = logging.getLogger("dkebpf.linker")

# dketrace tags (shared/spec/measurements.json); every other column is a field
TAGS = ("host", "service", "src_ip", "src_port", "dst_ip", "dst_port")
MAX_BODY = 64 << 20          # as posted
MAX_INFLATED = 256 << 20     # after gzip
READ_TIMEOUT_S = 30          # a client that stops sending its body loses the connection
BODIES_AT_ONCE = 4           # posts inflated and parsed at the same time; more wait: memory stays bounded
HELP = {"received": "Spans accepted and stored.", "rejected": "Points refused (not a span or not line protocol).",
        "late": "Spans that arrived after their window was linked (linked against the history).",
        "orphan": "Outgoing spans without the incoming span of their thread (roots of their own).",
        "dropped": "Spans refused because the disk budget was full (the poster got 503).",
        "sampled_out": "Spans of traces the sampling dropped.", "written": "Linked spans handed to DataKit.",
        "windows_linked": "Event-time windows linked.", "spilled_windows": "Windows evicted from memory to disk.",
        "quarantined_windows": "Windows whose linking failed, kept in <data-dir>/failed.",
        "history_evicted": "Linked spans forgotten before their horizon to bound memory (--history-spans)."}
GAUGES = {"pending_windows": "Windows waiting to be linked.",
          "memory_spans": "Spans of pending windows held in memory (bounded by --memory-spans).",
          "history_spans": "Linked spans kept joinable (bounded by --history-spans).",
          "disk_bytes": "Bytes of acknowledged spans in --data-dir."}
COUNTER_NAMES = {"windows_linked", "spilled_windows", "quarantined_windows", "history_evicted"}


def _gunzip(body):
    """The inflated body, at most MAX_INFLATED bytes (a small gzip bomb
    must not take the linker's memory)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(body, MAX_INFLATED)
    if d.unconsumed_tail:
        raise OverflowError(f"body inflates to more than {MAX_INFLATED} bytes")
    if not d.eof:
        raise zlib.error("truncated gzip stream")
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S

    def log_message(self, fmt, *args):
        log.debug(fmt, *args)

    def _answer(self, code, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if urlsplit(self.path).path == "/metrics":
            self._answer(200, render_metrics(self.server.linker.metrics()), METRICS_CONTENT_TYPE)
        else:
            self._answer(404, '{"error": "not found"}')

    def do_POST(self):
        if urlsplit(self.path).path != "/v1/bpftracing":
            self._answer(404, '{"error": "not found; spans go to /v1/bpftracing"}')
            return
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, '{"error": "Content-Length required"}')
            return
        if size < 0:
            self.close_connection = True
            self._answer(400, json.dumps({"error": f"Content-Length {size} is negative"}))
            return
        if size > MAX_BODY:
            self.close_connection = True  # the body is not read: the connection cannot go on
            self._answer(413, json.dumps({"error": f"body of {size} bytes, at most {MAX_BODY}"}))
            return
        parts, got, deadline = [], 0, time.monotonic() + READ_TIMEOUT_S
        try:
            while got < size and time.monotonic() < deadline:
                part = self.rfile.read1(size - got)
                if not part:
                    break  # the client closed the connection
                parts.append(part)
                got += len(part)
        except OSError:  # a read timed out or the connection broke
            pass
        if got < size:
            self.close_connection = True
            self._answer(408, json.dumps({"error": f"body cut: {got} of {size} bytes within {READ_TIMEOUT_S}s"}))
            return
        with self.server.linker.bodies:  # inflating and parsing take memory: a few at a time
            code, answer = self._ingest(b"".join(parts))
        self._answer(code, json.dumps(answer))

    def _ingest(self, body):
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = _gunzip(body)
            except OverflowError as exc:
                return 413, {"error": str(exc)}
            except zlib.error as exc:
                return 400, {"error": f"bad gzip body: {exc}"}
        return self.server.linker.ingest(body, self.headers.get("Content-Type", "").startswith(ARROW_STREAM))


class Linker:
    """The linker: HTTP server, event-time windows, output to DataKit."""

    def __init__(self, listen, sink, data_dir, **window_opts):
        host, _, port = listen.rpartition(":")
        self.sink = sink
        self.windows = Windows(data_dir, self._emit, **window_opts)
        try:
            self.server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), _Handler)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"linker: cannot listen on {listen!r}: {exc}") from None
        self.server.daemon_threads = True
        self.server.linker = self
        self.port = self.server.server_address[1]
        self.bodies = threading.BoundedSemaphore(BODIES_AT_ONCE)
        self._stop = threading.Event()
        self._threads = []

    def _emit(self, table):
        from .._lineproto import encode_batch

        fields = [c for c in table.column_names if c not in TAGS and c != "time"]
        tags = [c for c in TAGS if c in table.column_names]
        body, skipped = encode_batch("dketrace", table, tags, fields, {}, time.time_ns(),
                                     timestamp_column="time" if "time" in table.column_names else None)
        self.sink.submit("tracing", "ebpf-tracing", body, table.num_rows - skipped)

    def ingest(self, body, arrow=False):
        try:
            table, rejected, errors = (read_arrow if arrow else parse_spans)(body, time.time_ns())
        except Exception as exc:  # not Arrow, or pyarrow refusing mixed column types
            with self.windows.lock:
                self.windows.counters["rejected"] += 1
            return 400, {"error": f"spans not understood: {exc}"}
        with self.windows.lock:
            self.windows.counters["rejected"] += rejected
        if not self.windows.add(table):
            return 503, {"error": "linker disk budget full, retry later", "rejected": rejected}
        answer = {"accepted": table.num_rows, "rejected": rejected}
        if errors:  # the first few; every rejected line is counted
            answer["first_error"], answer["errors"] = errors[0], errors
        return (400 if rejected and not table.num_rows else 200), answer

    def metrics(self):
        with self.windows.lock:
            counters = dict(self.windows.counters)
        out = [Metric(f"dkebpf_linker_{k}_total" if k in COUNTER_NAMES else f"dkebpf_linker_spans_{k}_total",
                      "counter", HELP[k], [({}, v)]) for k, v in counters.items()]
        out += [Metric(f"dkebpf_linker_{k}", "gauge", GAUGES[k], [({}, v)]) for k, v in self.windows.gauges().items()]
        return out + process_metrics()

    def start(self):
        for target, name in ((self.server.serve_forever, "linker-http"), (self._ticker, "linker-tick")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _ticker(self):
        while not self._stop.wait(0.2):
            try:
                self.windows.tick()
            except Exception:  # a bug: logged, the linker keeps serving
                log.exception("linking failed")

    def close(self, deadline_s=5.0):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.windows.flush()
        self.sink.close(deadline_s)


def _seconds(text):
    units = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    for u in sorted(units, key=len, reverse=True):
        if text.endswith(u) and text[:-len(u)].replace(".", "", 1).isdigit():
            return float(text[:-len(u)]) * units[u]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise ConfigError(f"linker: not a duration: {text!r} (e.g. 20s, 500ms, 10m)")


def parser():
    p = argparse.ArgumentParser(prog="dkebpf linker", description="Link eBPF spans of many collectors into traces.")
    p.add_argument("--listen", default="0.0.0.0:9530", help="host:port for /v1/bpftracing and /metrics")
    p.add_argument("--datakit", default="http://127.0.0.1:9529", help="where linked spans go (tracing)")
    p.add_argument("--data-dir", default="/var/lib/dkebpf/linker", help="spans waiting to be linked")
    p.add_argument("--window", default="20s", help="event-time window")
    p.add_argument("--lateness", default="20s", help="how far behind the newest span a window is linked")
    p.add_argument("--horizon", default="10m", help="how long linked spans stay joinable (longest trace)")
    p.add_argument("--sampling-rate", type=float, default=1.0, help="share of traces kept (0..1), default all")
    p.add_argument("--memory-spans", type=int, default=1_000_000, help="spans held in memory before spilling")
    p.add_argument("--history-spans", type=int, default=2_000_000,
                   help="linked spans kept joinable at most (the oldest go first; ~100 bytes each)")
    p.add_argument("--max-disk-bytes", type=int, default=1 << 30, help="disk budget of --data-dir")
    p.add_argument("--no-address-check", action="store_true",
                   help="join across hosts on sequence numbers only (NAT between the hosts)")
    p.add_argument("--no-app-trace-id", action="store_true", help="trace_id is always the eBPF one")
    return p


def build(argv, sink=None):
    try:
        a = parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            raise ConfigError("linker: bad arguments (see dkebpf linker --help)") from None
        raise
    if not 0 <= a.sampling_rate <= 1:
        raise ConfigError(f"linker: --sampling-rate must be within 0..1, got {a.sampling_rate}")
    for flag in ("memory_spans", "history_spans", "max_disk_bytes"):
        if getattr(a, flag) < 0:
            raise ConfigError(f"linker: --{flag.replace('_', '-')} must be >= 0, got {getattr(a, flag)}")
    opts = dict(window_s=_seconds(a.window), lateness_s=_seconds(a.lateness), horizon_s=_seconds(a.horizon),
                sampling_rate=a.sampling_rate, memory_spans=a.memory_spans, history_spans=a.history_spans,
                max_disk_bytes=a.max_disk_bytes,
                match_addresses=not a.no_address_check, use_app_trace_id=not a.no_app_trace_id)
    if opts["window_s"] <= 0:
        raise ConfigError(f"linker: --window must be > 0, got {a.window!r}")
    if sink is None:  # after every check: a refused command line leaves no files behind
        from ..output.sink import HttpSink
        sink = HttpSink(a.datakit, spool_dir=a.data_dir.rstrip("/") + "-out")
    return Linker(a.listen, sink, a.data_dir, **opts)


def main(argv):
    """Serve until SIGTERM or SIGINT, then stop accepting, link every
    pending window, hand the spans to DataKit (what the sink cannot deliver
    in time goes to its spool) and exit 0."""
    linker = build(argv)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    linker.start()
    log.info("linker listening on port %d", linker.port)
    try:
        while not stop.wait(0.5):
            pass
        log.info("linker stopping: linking the pending windows")
    finally:
        linker.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0

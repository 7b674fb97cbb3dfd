"""A DataKit-compatible HTTP receiver for tests.

It answers what DataKit's HTTP API answers for the calls our collector
makes (see shared/reference/datakit-contract.md, "How points reach
DataKit")::

    POST /v1/write/<category>?input=<name>&precision=ns   line protocol
    POST /v1/bpftracing?...                               line protocol (category "bpftracing")
    GET  /v1/ping

Bodies may be sent with ``Content-Encoding: gzip`` and with a
``Content-Length`` or chunked. Every body is parsed with the independent
parser in ``lineproto_parser``; an unparseable body gets 400 with the
parser's message and stores nothing. ``precision`` may be ``ns`` (the
default), ``us``/``u``, ``ms`` or ``s``; stored timestamps are always ns.

Usage::

    with DataKitReceiver() as dk:
        run_collector(apiserver=dk.apiserver)
        dk.wait_for(lambda: dk.points("netflow"), timeout=10)

For delivery tests: ``fail_with(500)`` (optionally ``count=n``) makes it
answer that status instead of storing; ``stop()`` closes the port (clients
then get "connection refused") and ``start()`` listens again on the same
port. Connections are not kept alive (HTTP/1.0), so a stopped receiver
really stops answering.
"""
import gzip
import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple, Optional
from urllib.parse import parse_qs, urlsplit

from .lineproto_parser import Point, parse

__all__ = ["DataKitReceiver", "Record", "Request"]

_PRECISION_NS = {"ns": 1, "n": 1, "us": 1000, "u": 1000, "ms": 1000_000, "s": 1000_000_000}


class Record(NamedTuple):
    """One stored point; unpacks as ``(category, input, point)``."""
    category: str
    input: Optional[str]
    point: Point


@dataclass
class Request:
    """One HTTP request as received, with the answer given."""
    method: str
    path: str
    category: Optional[str]
    input: Optional[str]
    headers: dict
    body: bytes            # after gzip decoding (raw if decoding failed)
    status: int = 0
    points: int = 0
    error: Optional[str] = None
    query: dict = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class DataKitReceiver:
    def __init__(self, host="127.0.0.1", port=0):
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._records = []
        self._requests = []
        self._fail_status = None
        self._fail_count = None
        self._server = None
        self._thread = None

    # ------------------------------------------------------------ lifecycle
    def start(self):
        """Listen (again) on ``self.port``; the first start picks a free port."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self._handler_class())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"datakit-receiver:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop answering and close the listening socket (port kept for start())."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5)
        self._thread = None

    close = stop

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self):
        return self._server is not None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def apiserver(self):
        """``host:port``, what ``--datakit-apiserver`` takes."""
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------- control
    def fail_with(self, status, count=None):
        """Answer ``status`` (e.g. 500) to the next ``count`` write requests
        (all of them when count is None) without storing anything.
        ``fail_with(None)`` goes back to normal."""
        with self._lock:
            self._fail_status = status
            self._fail_count = count

    def clear(self):
        with self._lock:
            self._records.clear()
            self._requests.clear()

    # -------------------------------------------------------------- reading
    @property
    def records(self):
        """All stored ``Record(category, input, point)``, in arrival order."""
        with self._lock:
            return list(self._records)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self):
        with self._lock:
            return len(self._requests)

    def points(self, measurement=None, input=None, category=None):
        """Stored points, optionally only those of a measurement / input / category."""
        return [r.point for r in self.records
                if (measurement is None or r.point.measurement == measurement)
                and (input is None or r.input == input)
                and (category is None or r.category == category)]

    def wait_for(self, predicate, timeout=10.0, interval=0.02):
        """Poll ``predicate()`` until it returns something truthy and return
        that; raise AssertionError (with what was received) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                reqs = self.requests
                raise AssertionError(
                    f"condition not met within {timeout}s; received {len(reqs)} requests "
                    f"(statuses {[r.status for r in reqs][-10:]}), "
                    f"{len(self.records)} points")
            time.sleep(interval)

    # ------------------------------------------------------------- serving
    def _take_failure(self):
        with self._lock:
            if self._fail_status is None:
                return None
            status = self._fail_status
            if self._fail_count is not None:
                self._fail_count -= 1
                if self._fail_count <= 0:
                    self._fail_status = self._fail_count = None
            return status

    def _store(self, req, records):
        with self._lock:
            self._requests.append(req)
            self._records.extend(records)

    def _handler_class(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"
            server_version = "DataKitReceiver/1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _read_body(self):
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                if urlsplit(self.path).path == "/v1/ping":
                    self._reply(200, {"content": {"version": "1.84.0-dkebpf-test"}})
                else:
                    self._reply(404, {"error_code": "datakit.notFound",
                                      "message": f"no route {self.path}"})

            def do_POST(self):
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["v1", "write"] and parts[2]:
                    category = parts[2]
                elif parts == ["v1", "bpftracing"]:
                    category = "bpftracing"
                else:
                    category = None
                raw = self._read_body()
                req = Request("POST", self.path, category, query.get("input"),
                              dict(self.headers.items()), raw, query=query)
                status, answer = self._handle(req, raw)
                req.status = status
                if status >= 400:
                    req.error = answer.get("message")
                self._reply(status, answer)

            def _handle(self, req, raw):
                if req.category is None:
                    receiver._store(req, [])
                    return 404, {"error_code": "datakit.notFound",
                                 "message": f"no route {req.path}"}
                failure = receiver._take_failure()
                if failure is not None:
                    receiver._store(req, [])
                    return failure, {"error_code": "datakit.injectedFailure",
                                     "message": f"test receiver told to answer {failure}"}

                def bad(status, msg):
                    receiver._store(req, [])
                    return status, {"error_code": "datakit.badRequest", "message": msg}

                ctype = req.headers.get("Content-Type", "")
                if "protobuf" in ctype:
                    return bad(415, f"Content-Type {ctype!r}: this test receiver only "
                                    f"reads line protocol")
                enc = req.headers.get("Content-Encoding", "").lower()
                if enc == "gzip":
                    try:
                        req.body = gzip.decompress(raw)
                    except (OSError, EOFError, zlib.error) as exc:
                        return bad(400, f"bad gzip body: {exc}")
                elif enc not in ("", "identity"):
                    return bad(415, f"unsupported Content-Encoding {enc!r}")
                precision = req.query.get("precision", "ns")
                if precision not in _PRECISION_NS:
                    return bad(400, f"unknown precision {precision!r}")
                try:
                    points = parse(req.body)
                except ValueError as exc:
                    return bad(400, str(exc))
                mult = _PRECISION_NS[precision]
                if mult != 1:
                    points = [p._replace(timestamp=p.timestamp * mult)
                              if p.timestamp is not None else p for p in points]
                req.points = len(points)
                receiver._store(req, [Record(req.category, req.input, p) for p in points])
                return 200, {}

        return Handler

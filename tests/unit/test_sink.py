"""Tests of dkebpf.output.sink against a real HTTP server on 127.0.0.1.

The server is written here (no shared helper): it records every request,
answers with a scripted status, and can be stopped and restarted on the
same port to play a DataKit restart."""

import gzip
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf.errors import ConfigError
from dkebpf.output import sink as sink_mod
from dkebpf.output.sink import FileSink, HttpSink, StdoutSink, open_sink

LOGGER = "dkebpf.output"


class Req:
    def __init__(self, path, query, headers, raw, status):
        self.path = path
        self.query = query  # raw query string, still %-escaped
        self.headers = headers
        self.raw = raw
        self.status = status

    @property
    def body(self):
        if self.headers.get("Content-Encoding") == "gzip":
            return gzip.decompress(self.raw)
        return self.raw


class Recorder:
    """A DataKit stand-in. ``statuses`` are answered first, in order, then
    ``default_status``."""

    def __init__(self, port=0):
        self.lock = threading.Lock()
        self.requests = []
        self.statuses = []
        self.default_status = 204
        self.answer = b""
        self.port = port
        self.httpd = None
        self.start()

    def start(self):
        rec = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one connection per request, so a stopped server
            # cannot keep answering on a kept-alive connection.
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with rec.lock:
                    status = rec.statuses.pop(0) if rec.statuses else rec.default_status
                    answer = rec.answer if status >= 300 else b""
                    parts = urlsplit(self.path)
                    rec.requests.append(Req(parts.path, parts.query, dict(self.headers), raw, status))
                self.send_response(status)
                if status != 204:
                    self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if answer:
                    self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        t = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def delivered(self):
        """Bodies of the requests that were answered 2xx, in arrival order."""
        with self.lock:
            return b"".join(r.body for r in self.requests if 200 <= r.status < 300)

    def count(self):
        with self.lock:
            return len(self.requests)


@pytest.fixture
def server():
    s = Recorder()
    yield s
    try:
        s.stop()
    except Exception:
        pass


@pytest.fixture
def dead_address():
    """127.0.0.1:<port> where nothing listens (connection refused)."""
    s = Recorder()
    s.stop()
    return s.address


@pytest.fixture
def sinks():
    made = []
    yield made
    for s in made:
        s.close(0.5)


def wait_until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def lines(prefix, n, start=0, pad=0):
    """n distinct line-protocol lines, one body each."""
    return [
        (f"m,id={prefix}{i} f={i}i,pad=\"{'x' * pad}\" {1700000000000000000 + i}\n").encode()
        for i in range(start, start + n)
    ]


def check_accounting(st):
    assert (
        st["points_submitted"] + st["points_recovered"]
        == st["points_sent"] + st["points_dropped"] + st["points_queued"] + st["points_spooled"]
    )
    if not st["points_recovered"] and not st["points_spooled"]:
        assert st["points_submitted"] == st["points_sent"] + st["points_dropped"] + st["points_queued"]


# -- request format ------------------------------------------------------------


def test_url_gzip_and_plain_bodies(server, sinks):
    sink = open_sink(None, server.address, gzip_min_bytes=1024)
    sinks.append(sink)
    assert isinstance(sink, HttpSink)

    big = b"".join(lines("a", 40, pad=20))
    assert len(big) > 1024
    sink.submit("network", "ebpf-net/netflow", big, 40)
    assert sink.flush(5.0)
    small = lines("b", 1)[0]
    sink.submit("logging", "ebpf-bash", small, 1)
    assert sink.flush(5.0)

    r1, r2 = server.requests
    assert r1.path == "/v1/write/network"
    assert "input=ebpf-net%2Fnetflow" in r1.query.split("&")
    assert parse_qs(r1.query) == {"input": ["ebpf-net/netflow"], "precision": ["ns"]}
    assert r1.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r1.headers["Content-Encoding"] == "gzip"
    assert len(r1.raw) < len(big)
    assert r1.body == big

    assert r2.path == "/v1/write/logging"
    assert parse_qs(r2.query) == {"input": ["ebpf-bash"], "precision": ["ns"]}
    assert "Content-Encoding" not in r2.headers
    assert r2.raw == small

    st = sink.stats()
    assert st["points_sent"] == 41 and st["batches_sent"] == 2
    assert st["points_dropped"] == 0 and st["points_queued"] == 0
    check_accounting(st)


def test_body_is_copied_and_newline_terminated(server, sinks):
    sink = open_sink(None, "http://" + server.address + "/")
    sinks.append(sink)
    buf = bytearray(b"m f=1i 1")  # no trailing newline, and reused by the caller
    sink.submit("network", "x", buf, 1)
    buf[:] = b"garbage"
    sink.submit("network", "x", memoryview(b"m f=2i 2\n"), 1)
    assert sink.flush(5.0)
    assert server.delivered() == b"m f=1i 1\nm f=2i 2\n"
    with pytest.raises(TypeError):
        sink.submit("network", "x", "text", 1)


def test_coalesces_consecutive_bodies_per_endpoint(server, sinks, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    server.statuses = [500]
    sink = open_sink(None, server.address)
    sinks.append(sink)
    a, b, c = lines("c", 3)
    d = lines("d", 1)[0]
    sink.submit("network", "ebpf-net/netflow", a, 1)
    # The first attempt fails: the sender sleeps >= 0.4 s in backoff, so
    # the next bodies join the queue behind the head before the retry.
    assert wait_until(lambda: sink.stats()["retries"] == 1)
    sink.submit("network", "ebpf-net/netflow", b, 1)
    sink.submit("network", "ebpf-net/netflow", c, 1)
    sink.submit("network", "ebpf-net/httpflow", d, 1)
    assert sink.flush(10.0)
    ok = [r for r in server.requests if r.status == 204]
    assert [r.body for r in ok] == [a + b + c, d]
    assert [parse_qs(r.query)["input"] for r in ok] == [["ebpf-net/netflow"], ["ebpf-net/httpflow"]]


# -- retry and rejection -------------------------------------------------------------


def test_5xx_retried_until_delivered_exactly_once(server, sinks, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    server.statuses = [500, 503]
    sink = open_sink(None, server.address)
    sinks.append(sink)
    bodies = lines("r", 20)
    for body in bodies:
        sink.submit("network", "ebpf-net/netflow", body, 1)
    assert sink.flush(10.0)

    assert server.delivered() == b"".join(bodies)  # each line once, in order
    st = sink.stats()
    assert st["retries"] == 2 and st["http_errors"] == 2
    assert st["points_sent"] == 20 and st["points_dropped"] == 0
    check_accounting(st)
    fails = [r for r in caplog.records if "cannot deliver" in r.getMessage()]
    assert len(fails) == 1 and "HTTP 500" in fails[0].getMessage()
    # logged by the sender just after it releases the batch
    assert wait_until(lambda: any("recovered" in r.getMessage() for r in caplog.records))


def test_4xx_dropped_not_retried_and_logged_once(server, sinks, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    server.default_status = 400
    server.answer = b"invalid line protocol: " + b"E" * 400
    sink = open_sink(None, server.address)
    sinks.append(sink)
    sink.submit("network", "ebpf-net/netflow", b"".join(lines("x", 3)), 3)
    assert sink.flush(5.0)
    time.sleep(0.7)  # longer than the first backoff: a retry would show
    assert server.count() == 1

    st = sink.stats()
    assert st["points_dropped"] == 3 and st["points_dropped_rejected"] == 3
    assert st["retries"] == 0 and st["http_errors"] == 1 and st["points_sent"] == 0
    check_accounting(st)
    answers = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(answers) == 1
    assert "HTTP 400" in answers[0]
    assert ("invalid line protocol: " + "E" * 177) in answers[0]
    assert "E" * 178 not in answers[0]  # first 200 chars of the answer only

    # Same answer again: counted, not logged again.
    sink.submit("network", "ebpf-net/netflow", lines("y", 1)[0], 1)
    assert sink.flush(5.0)
    assert server.count() == 2
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1

    caplog.clear()
    sink.log_drops_once()
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING
    assert "dropped 4 points" in rec.getMessage() and "4xx" in rec.getMessage()
    caplog.clear()
    sink.log_drops_once()  # nothing new dropped: silent
    assert caplog.records == []


def test_server_down_then_back_all_arrive_in_order(server, sinks, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = open_sink(None, server.address)
    sinks.append(sink)
    first = lines("p", 5)
    for body in first:
        sink.submit("network", "ebpf-net/netflow", body, 1)
    assert sink.flush(5.0)

    server.stop()
    second = lines("q", 30)
    for body in second[:15]:
        sink.submit("network", "ebpf-net/netflow", body, 1)
    time.sleep(1.0)
    for body in second[15:]:
        sink.submit("network", "ebpf-net/netflow", body, 1)
    assert wait_until(lambda: sink.stats()["retries"] >= 2, timeout=30)  # refused, still retrying
    server.start()  # same port
    assert sink.flush(10.0)

    assert server.delivered() == b"".join(first + second)
    st = sink.stats()
    assert st["points_sent"] == 35 and st["points_dropped"] == 0
    assert st["connection_errors"] == st["retries"] >= 2
    check_accounting(st)
    assert wait_until(lambda: any("recovered" in r.getMessage() for r in caplog.records))
    msgs = [r.getMessage() for r in caplog.records]
    assert len([m for m in msgs if "cannot deliver" in m]) == 1  # not one per retry
    assert not [m for m in msgs if "still failing" in m]
    assert len([m for m in msgs if "recovered" in m]) == 1


def test_queue_byte_limit_drops_oldest(server, sinks, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    bodies = [f"m,id=z{i:03d} f={i:03d}i,pad=\"{'x' * 40}\" {1700000000000000000 + i}\n".encode() for i in range(50)]
    size = len(bodies[0])
    assert {len(b) for b in bodies} == {size}
    keep = 10
    sink = open_sink(None, server.address, max_queue_bytes=keep * size + size // 2)
    sinks.append(sink)
    server.stop()
    sink.submit("network", "ebpf-net/netflow", bodies[0], 1)
    # The sender failed once and sleeps in backoff: nothing is in flight.
    assert wait_until(lambda: sink.stats()["retries"] >= 1)
    for body in bodies[1:]:
        sink.submit("network", "ebpf-net/netflow", body, 1)

    st = sink.stats()
    assert st["points_queued"] == keep
    assert st["points_dropped"] == st["points_dropped_queue_full"] == 50 - keep
    assert st["bytes_queued"] <= keep * size + size // 2
    check_accounting(st)

    server.start()
    assert sink.flush(10.0)
    assert server.delivered() == b"".join(bodies[-keep:])  # the newest, in order
    st = sink.stats()
    assert st["points_sent"] == keep and st["points_dropped"] == 50 - keep
    check_accounting(st)
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1
    caplog.clear()
    sink.log_drops_once()
    # the sender thread may log its "recovered" line meanwhile: look at drop lines only
    (rec,) = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert "dropped 40 points" in rec.getMessage() and "queue full" in rec.getMessage()


def test_body_larger_than_queue_is_dropped(server, sinks):
    sink = open_sink(None, server.address, max_queue_bytes=100)
    sinks.append(sink)
    sink.submit("network", "n", b"".join(lines("big", 5)), 5)
    st = sink.stats()
    assert st["points_dropped_queue_full"] == 5 and st["points_queued"] == 0
    sink.submit("network", "n", b"m f=1i 1\n", 1)
    assert sink.flush(5.0)
    assert server.delivered() == b"m f=1i 1\n"


# -- never blocking, bounded shutdown ------------------------------------------------


@pytest.fixture
def blackhole():
    """Accepts TCP connections (in the kernel backlog) but never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_submit_does_not_wait_for_network(blackhole, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = open_sink(None, blackhole, timeout=5.0)
    sink.submit("network", "ebpf-net/netflow", lines("h", 1)[0], 1)
    assert wait_until(lambda: sink._q and sink._q[0].sending)  # request in flight
    for body in lines("h", 199, start=1):
        sink.submit("network", "ebpf-net/netflow", body, 1)
    # Every submit returned while the request hangs: all points are queued.
    st = sink.stats()
    assert st["points_submitted"] == st["points_queued"] == 200
    assert st["points_sent"] == 0 and st["requests"] == 0

    t0 = time.monotonic()
    sink.close(deadline_s=0.5)
    assert time.monotonic() - t0 < 1.5  # not the 5 s request timeout
    st = sink.stats()
    assert st["points_dropped_shutdown"] == 200 and st["points_queued"] == 0
    check_accounting(st)
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert drops == ["dropped 200 points since the last report (shutdown: 200)"]


def test_batch_in_flight_is_not_evicted(blackhole):
    size = 40
    bodies = [(f"m,id=f{i:03d} v=1i".ljust(size - 1, "x") + "\n").encode() for i in range(31)]
    sink = open_sink(None, blackhole, timeout=5.0, max_queue_bytes=10 * size)
    try:
        sink.submit("network", "n", bodies[0], 1)
        assert wait_until(lambda: sink._q and sink._q[0].sending)
        for body in bodies[1:]:
            sink.submit("network", "n", body, 1)
        st_ = sink.stats()
        # The head stays (its request is in flight); the oldest of the
        # rest were dropped; the bound holds including the head.
        assert st_["points_queued"] == 10 and st_["points_dropped_queue_full"] == 21
        assert st_["bytes_queued"] == 10 * size
        queued = [p[0] for b in sink._q for p in b.parts]
        assert queued == [bodies[0]] + bodies[-9:]
        check_accounting(st_)
    finally:
        sink.close(0.2)


def test_still_failing_is_rate_limited(dead_address, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setattr(sink_mod, "LOG_EVERY_S", 1.0)
    sink = open_sink(None, dead_address)
    try:
        sink.submit("network", "n", b"m f=1i 1\n", 1)
        # attempts at ~0, ~0.5, ~1.5 s: the third is the first 1 s after the first log
        assert wait_until(lambda: sink.stats()["retries"] >= 3, timeout=5.0)
        assert wait_until(lambda: any("still failing" in r.getMessage() for r in caplog.records), 1.0)
        msgs = [r.getMessage() for r in caplog.records]
        assert len([m for m in msgs if "cannot deliver" in m]) == 1
        still = [m for m in msgs if "still failing" in m]
        assert len(still) == 1 and "3 failed attempts" in still[0] and "1 points queued" in still[0]
    finally:
        sink.close(0.2)


def _dead_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(8, 300)), min_size=1, max_size=40),
    max_queue=st.integers(50, 1500),
    max_batch=st.integers(20, 2000),
)
def test_queue_keeps_longest_fitting_suffix(ops, max_queue, max_batch):
    saved = sink_mod.BACKOFF_INITIAL_S
    sink_mod.BACKOFF_INITIAL_S = 60.0  # the sender stays parked after its first failure
    try:
        sink = HttpSink(f"127.0.0.1:{_dead_port()}", max_queue_bytes=max_queue, max_batch_bytes=max_batch)
        try:
            primer = b"primer 1\n"
            sink.submit("c", "primer", primer, 1)
            assert wait_until(lambda: sink.stats()["retries"] == 1)
            accepted = [primer]
            too_big = 0
            for i, (key, n) in enumerate(ops):
                body = (f"{i:04d}".ljust(n - 1, "x") + "\n").encode()
                sink.submit("c", key, body, 1)
                if n > max_queue:
                    too_big += 1
                else:
                    accepted.append(body)
            # model: the longest suffix of accepted bodies that fits
            keep, total = [], 0
            for body in reversed(accepted):
                if total + len(body) > max_queue:
                    break
                keep.append(body)
                total += len(body)
            keep.reverse()
            queued = [p[0] for b in sink._q for p in b.parts]
            assert queued == keep
            for b in sink._q:
                # coalesced up to the batch limit; one bigger body goes alone
                assert 0 < b.nbytes <= min(max_batch, max_queue) or len(b.parts) == 1
                assert b.nbytes == sum(len(p[0]) for p in b.parts)
                assert b.npoints == len(b.parts)
            st_ = sink.stats()
            assert st_["points_queued"] == len(keep) and st_["bytes_queued"] == total
            assert st_["points_dropped_queue_full"] == len(ops) + 1 - len(keep)
            check_accounting(st_)
        finally:
            sink.close(0)
        st_ = sink.stats()
        assert st_["points_queued"] == 0 and st_["points_dropped"] == len(ops) + 1
    finally:
        sink_mod.BACKOFF_INITIAL_S = saved


def test_close_with_unreachable_server(dead_address, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = open_sink(None, dead_address)
    for body in lines("u", 10):
        sink.submit("logging", "ebpf-bash", body, 1)
    assert wait_until(lambda: sink.stats()["retries"] >= 1)
    assert not sink.flush(0.2)
    t0 = time.monotonic()
    sink.close(deadline_s=1.0)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5
    assert not sink._thread.is_alive()
    st = sink.stats()
    assert st["points_dropped"] == st["points_dropped_shutdown"] == 10
    assert st["points_queued"] == 0 and st["points_sent"] == 0
    check_accounting(st)
    assert len([r for r in caplog.records if "shutdown: 10" in r.getMessage()]) == 1

    sink.submit("logging", "ebpf-bash", b"late f=1i 1\n", 1)  # after close: counted, no raise
    assert sink.stats()["points_dropped_shutdown"] == 11
    sink.close()  # idempotent


def test_close_delivers_pending(server, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = open_sink(None, server.address)
    bodies = lines("k", 25)
    for body in bodies:
        sink.submit("network", "ebpf-net/netflow", body, 1)
    sink.close(5.0)
    assert server.delivered() == b"".join(bodies)
    st = sink.stats()
    assert st["points_sent"] == 25 and st["points_dropped"] == 0
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]


# -- stdout and file --------------------------------------------------------------


def test_stdout_sink(capsys):
    for output in ("-", None):
        sink = open_sink(output, None)
        assert isinstance(sink, StdoutSink)
        sink.submit("network", "ebpf-net/netflow", b"a f=1i 1\nb f=2i 2\n", 2)
        sink.submit("logging", "ebpf-bash", b"c f=3i 3", 1)
        assert sink.flush(0)
        st = sink.stats()
        assert st["points_sent"] == 3 and st["batches_sent"] == 2
        sink.close()
        assert capsys.readouterr().out == "a f=1i 1\nb f=2i 2\nc f=3i 3\n"
    # output wins over the apiserver
    assert isinstance(open_sink("-", "127.0.0.1:9"), StdoutSink)


def test_file_sink_appends(tmp_path):
    path = tmp_path / "points.lp"
    path.write_bytes(b"old f=0i 0\n")
    sink = open_sink(str(path), "127.0.0.1:9")
    assert isinstance(sink, FileSink)
    sink.submit("network", "ebpf-net/netflow", b"a f=1i 1\n", 1)
    assert path.read_bytes() == b"old f=0i 0\na f=1i 1\n"  # flushed per submit
    # a second writer appending to the same file does not get overwritten
    with open(path, "ab") as other:
        other.write(b"other f=9i 9\n")
    sink.submit("network", "ebpf-net/netflow", b"b f=2i 2\n", 1)
    sink.close()
    assert path.read_bytes() == b"old f=0i 0\na f=1i 1\nother f=9i 9\nb f=2i 2\n"
    assert os.stat(path).st_mode & 0o777 in (0o644, 0o664, 0o600, 0o640)
    sink.submit("network", "ebpf-net/netflow", b"c f=3i 3\n", 1)  # closed: counted
    st = sink.stats()
    assert st["points_sent"] == 2 and st["points_dropped_shutdown"] == 1
    check_accounting(st)


def test_file_sink_errors(tmp_path, caplog):
    with pytest.raises(ConfigError, match="output"):
        open_sink(str(tmp_path / "missing" / "x.lp"), None)
    # A write error drops the body, counts it and never raises.
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = open_sink(str(tmp_path / "x.lp"), None)
    sink._f.close()
    for _ in range(5):
        sink.submit("network", "n", b"a f=1i 1\n", 1)
    st = sink.stats()
    assert st["points_dropped_write_error"] == 5
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


def test_apiserver_forms():
    for bad in ("", "ftp://127.0.0.1:21"):
        with pytest.raises(ConfigError):
            HttpSink(bad)
    with pytest.raises(ConfigError):
        open_sink(None, "127.0.0.1:9", max_queue_bytes=0)
    s = HttpSink("https://127.0.0.1:9/")
    try:
        assert s.base_url == "https://127.0.0.1:9"
    finally:
        s.close(0)


# -- on-disk spool ---------------------------------------------------------------


def _fixed_bodies(prefix, n):
    bodies = [f"m,id={prefix}{i:03d} f={i:03d}i,pad=\"{'x' * 40}\" {1700000000000000000 + i}\n".encode() for i in range(n)]
    assert len({len(b) for b in bodies}) == 1
    return bodies


def _spool_files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".lp"))


def test_spool_keeps_everything_while_server_is_down(server, sinks, tmp_path):
    spool = tmp_path / "spool"
    bodies = _fixed_bodies("s", 40)
    size = len(bodies[0])
    sink = open_sink(None, server.address, max_queue_bytes=3 * size + size // 2, spool_dir=str(spool))
    sinks.append(sink)
    server.stop()
    sink.submit("network", "ebpf-net/netflow", bodies[0], 1)
    assert wait_until(lambda: sink.stats()["retries"] >= 1)
    for body in bodies[1:]:
        sink.submit("network", "ebpf-net/netflow", body, 1)

    st = sink.stats()
    assert st["points_dropped"] == 0
    assert st["points_queued"] <= 3 and st["points_spooled"] == 40 - st["points_queued"]
    names = _spool_files(spool)
    assert names and st["spool_bytes"] == sum(os.path.getsize(spool / n) for n in names)
    seq, cat, inp, npts, ext = names[0].split(".")
    assert len(seq) == 20 and cat == "network" and inp == "ebpf-net%2Fnetflow" and ext == "lp"
    assert sum(int(n.split(".")[3]) for n in names) == st["points_spooled"]
    assert not sink.flush(0.1)
    check_accounting(st)

    server.start()
    assert sink.flush(10.0)
    assert server.delivered() == b"".join(bodies)  # each once, in order
    st = sink.stats()
    assert st["points_sent"] == 40 and st["points_dropped"] == 0
    assert st["points_spooled"] == st["spool_bytes"] == st["points_queued"] == 0
    assert os.listdir(spool) == []
    check_accounting(st)


def test_spool_limit_drops_oldest(server, sinks, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    spool = tmp_path / "spool"
    bodies = _fixed_bodies("t", 40)
    size = len(bodies[0])
    sink = open_sink(
        None, server.address, max_queue_bytes=2 * size, spool_dir=str(spool), spool_max_bytes=6 * size
    )
    sinks.append(sink)
    server.stop()
    sink.submit("network", "n", bodies[0], 1)
    assert wait_until(lambda: sink.stats()["retries"] >= 1)
    for body in bodies[1:]:
        sink.submit("network", "n", body, 1)
    st = sink.stats()
    assert st["spool_bytes"] <= 6 * size
    assert st["points_dropped"] == st["points_dropped_spool_full"] > 0
    assert st["points_spooled"] + st["points_queued"] + st["points_dropped"] == 40
    check_accounting(st)

    server.start()
    assert sink.flush(10.0)
    got = server.delivered()
    st = sink.stats()
    kept = 40 - st["points_dropped"]
    assert got == b"".join(bodies[-kept:])  # the newest, in order
    assert st["points_sent"] == kept and os.listdir(spool) == []
    check_accounting(st)
    sink.log_drops_once()
    assert any("spool full" in r.getMessage() for r in caplog.records)


def test_close_spools_memory_and_next_run_sends_it(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    spool = tmp_path / "spool"
    bodies = _fixed_bodies("c", 10)
    server.stop()
    sink = open_sink(None, server.address, spool_dir=str(spool))
    for body in bodies[:5]:
        sink.submit("network", "ebpf-net/netflow", body, 1)
    for body in bodies[5:]:
        sink.submit("logging", "ebpf-bash", body, 1)
    sink.close(0.5)
    st = sink.stats()
    assert st["points_dropped"] == 0 and st["points_queued"] == 0 and st["points_spooled"] == 10
    check_accounting(st)
    assert len(_spool_files(spool)) == 2
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]

    server.start()
    sink2 = open_sink(None, server.address, spool_dir=str(spool))
    try:
        assert sink2.flush(10.0)
        sink2.submit("network", "ebpf-net/netflow", b"new f=1i 1\n", 1)
        assert sink2.flush(5.0)
        assert server.delivered() == b"".join(bodies) + b"new f=1i 1\n"
        ok = [r for r in server.requests if r.status == 204]
        assert [r.path for r in ok] == ["/v1/write/network", "/v1/write/logging", "/v1/write/network"]
        assert parse_qs(ok[0].query)["input"] == ["ebpf-net/netflow"]
        st = sink2.stats()
        assert st["points_recovered"] == 10 and st["points_submitted"] == 1
        assert st["points_sent"] == 11 and st["points_spooled"] == 0
        check_accounting(st)
        assert os.listdir(spool) == []
    finally:
        sink2.close(0.5)


def test_spool_dir_not_writable(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"")
    bad = str(f / "spool")
    with pytest.raises(ConfigError, match="--spool-dir") as ei:
        open_sink(None, "127.0.0.1:9", spool_dir=bad)
    assert bad in str(ei.value)
    # stdout / file outputs ignore the spool
    assert isinstance(open_sink("-", None, spool_dir=bad), StdoutSink)


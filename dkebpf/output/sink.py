"""The one place points leave the process.

Callers hand over points already encoded as line protocol (one or more
``\\n``-terminated lines) with their count; a sink writes them to stdout, to
a file, or posts them to DataKit's HTTP API::

    sink = open_sink(output, datakit_apiserver)
    sink.submit("network", "ebpf-net/netflow", body, npoints)   # never blocks
    sink.log_drops_once()                                       # once per interval
    sink.close(5.0)

Delivery to DataKit (``HttpSink``) runs on one background thread that takes
batches from a queue bounded in *bytes*. Collection must never wait for the
network, so ``submit`` only appends (coalescing consecutive bodies for the
same category and input) and, when the queue is full, drops the *oldest*
queued points to make room: after an outage the newest data is what matters.
Connection errors, timeouts, 5xx (and 408/429, which ask the client to come
back later) are retried with exponential backoff while the batch stays at
the head of the queue, so points arrive in order and exactly once per
successful request. Any other non-2xx answer means DataKit refuses the
content itself (bad line protocol, unknown category): retrying cannot help,
the batch is dropped and DataKit's answer is logged.

With ``spool_dir`` (HTTP only) the queue overflows to disk instead of
dropping: batches that would be evicted are written there, one file per
batch named ``<seq:020d>.<category>.<input>.<npoints>.lp`` (category and
input %-quoted, "." included), written under a temporary name and renamed.
``seq`` is the submission sequence number of the batch's first body, so the
sender always sends the oldest pending data first, spooled or in memory.
Spooled files are deleted after a 2xx (or a 4xx, counted as rejected). When
the spool exceeds ``spool_max_bytes`` its oldest files are deleted and their
points counted as dropped ("spool full"). ``close`` writes what is still in
memory to the spool, and a new sink on the same directory picks up and sends
the files of a previous run (counted in ``points_recovered``, then in
``points_sent`` / ``points_dropped`` like any other point). Delivery of a
spooled batch is at-least-once in one corner case: a request still in flight
when close() gives up may have been accepted by DataKit and is spooled too.

The original collector sends with no buffer, no retry and no timeout, so a
DataKit restart loses data (see shared/reference/datakit-contract.md); this
module is where we do better. It works per batch, never per kernel event.
"""

from __future__ import annotations

import collections
import gzip
import logging
import os
import random
import sys
import threading
import time
from typing import Deque, Dict, List, Optional, Tuple
from urllib.parse import quote, unquote, urlsplit

from dkebpf.errors import ConfigError

__all__ = ["Sink", "StdoutSink", "FileSink", "HttpSink", "open_sink"]

# DataKit reads the body whole; 4 MiB per request keeps one request well
# under its default body limits while amortising the per-request cost.
MAX_BATCH_BYTES = 4 << 20
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
# At most one "still failing" line per this many seconds.
LOG_EVERY_S = 30.0
# HTTP statuses that are retried like 5xx: 408 Request Timeout and
# 429 Too Many Requests say "try again later", not "this body is wrong".
_RETRY_4XX = frozenset((408, 429))
# How many distinct 4xx answers are logged (each once); bounds the memory
# kept if DataKit varies its answer per request.
_MAX_DISTINCT_ANSWERS = 16

# Drop reasons: the text appears in the log line of log_drops_once().
QUEUE_FULL = "queue full"
REJECTED = "rejected by DataKit (4xx)"
SHUTDOWN = "shutdown"
WRITE_ERROR = "write error"
SPOOL_FULL = "spool full"
_REASON_STAT = {
    QUEUE_FULL: "points_dropped_queue_full",
    REJECTED: "points_dropped_rejected",
    SHUTDOWN: "points_dropped_shutdown",
    WRITE_ERROR: "points_dropped_write_error",
    SPOOL_FULL: "points_dropped_spool_full",
}

_SPOOL_SUFFIX = ".lp"
_SPOOL_TMP = ".tmp-"


def _spool_quote(s: str) -> str:
    return quote(s, safe="").replace(".", "%2E")


def _as_bytes(body) -> bytes:
    """Own the body: callers reuse their encode buffers (bytearray,
    memoryview), so anything but ``bytes`` is copied. Each body must end in
    a newline so that coalesced bodies stay separate lines."""
    if not isinstance(body, bytes):
        if isinstance(body, str):
            raise TypeError("sink.submit() takes encoded bytes, not str")
        body = bytes(body)
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return body


class Sink:
    """Common counters and drop reporting. Subclasses implement ``submit``."""

    def __init__(self, logger: Optional[logging.Logger] = None):
        self._log = logger or logging.getLogger("dkebpf.output")
        self._lock = threading.Lock()
        self._closed = False
        self._st: Dict[str, int] = {
            "points_submitted": 0,
            "points_sent": 0,
            "points_dropped": 0,
            "points_queued": 0,
            "bytes_queued": 0,
            "bytes_sent": 0,
            "batches_sent": 0,
            "requests": 0,
            "retries": 0,
            "http_errors": 0,
            "connection_errors": 0,
            # spool (HttpSink with spool_dir): points/bytes currently on
            # disk, and points found on disk from a previous run at start.
            "points_spooled": 0,
            "spool_bytes": 0,
            "points_recovered": 0,
        }
        for key in _REASON_STAT.values():
            self._st[key] = 0
        # points dropped since the last log_drops_once(), per reason
        self._drops_since: Dict[str, int] = {}

    # -- accounting (callers hold self._lock) ------------------------------

    def _count_drop(self, reason: str, npoints: int) -> None:
        self._st["points_dropped"] += npoints
        self._st[_REASON_STAT[reason]] += npoints
        self._drops_since[reason] = self._drops_since.get(reason, 0) + npoints

    def _count_sent(self, npoints: int, nbytes: int) -> None:
        self._st["points_sent"] += npoints
        self._st["bytes_sent"] += nbytes
        self._st["batches_sent"] += 1

    # -- public API ---------------------------------------------------------

    def submit(self, category: str, input_name: str, body: bytes, npoints: int) -> None:
        raise NotImplementedError

    def flush(self, deadline_s: float) -> bool:
        """Wait until everything submitted so far is delivered (or dropped
        for a counted reason). True when nothing from before the call is
        still pending."""
        return True

    def close(self, deadline_s: float = 5.0) -> None:
        with self._lock:
            self._closed = True
        self.log_drops_once()

    def stats(self) -> Dict[str, int]:
        """Counters; always points_submitted + points_recovered ==
        points_sent + points_dropped + points_queued + points_spooled.
        points_recovered (points found in the spool of a previous run at
        start-up) and points_spooled are 0 without a spool, so then
        points_submitted == points_sent + points_dropped + points_queued."""
        with self._lock:
            return dict(self._st)

    def log_drops_once(self) -> None:
        """One warning line if points were dropped since the last call."""
        with self._lock:
            drops, self._drops_since = self._drops_since, {}
        total = sum(drops.values())
        if not total:
            return
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(drops.items()))
        self._log.warning("dropped %d points since the last report (%s)", total, detail)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _StreamSink(Sink):
    """Writes bodies synchronously; a write error drops that body."""

    def __init__(self, logger=None):
        super().__init__(logger)
        self._last_err_log = None  # monotonic time of the last error line
        self._errs_unlogged = 0

    def _write(self, body: bytes) -> None:
        raise NotImplementedError

    def _describe(self) -> str:
        raise NotImplementedError

    def submit(self, category, input_name, body, npoints):
        body = _as_bytes(body)
        npoints = int(npoints)
        if not body:  # nothing to write; a count without lines is not a point
            return
        err = None
        with self._lock:
            self._st["points_submitted"] += npoints
            if self._closed:
                self._count_drop(SHUTDOWN, npoints)
                return
            try:
                self._write(body)
            except (OSError, ValueError) as e:  # ValueError: closed stream
                self._count_drop(WRITE_ERROR, npoints)
                err = e
            else:
                self._count_sent(npoints, len(body))
                return
            now = time.monotonic()
            if self._last_err_log is not None and now - self._last_err_log < LOG_EVERY_S:
                self._errs_unlogged += 1
                return
            self._last_err_log = now
            more, self._errs_unlogged = self._errs_unlogged, 0
        self._log.warning(
            "cannot write points to %s: %s%s",
            self._describe(),
            err,
            f" ({more} more write errors since the last report)" if more else "",
        )


class StdoutSink(_StreamSink):
    """``--output -``: bodies to standard output, flushed per submit."""

    def _describe(self):
        return "stdout"

    def _write(self, body):
        out = sys.stdout  # looked up per write: tests and the CLI may swap it
        buf = getattr(out, "buffer", None)
        if buf is None:
            out.write(body.decode("utf-8", "replace"))
            out.flush()
            return
        out.flush()  # text written through the text layer goes out first
        buf.write(body)
        buf.flush()


class FileSink(_StreamSink):
    """``--output PATH``: appends to a file opened once with O_APPEND, so
    several writers (or a rotating reader) never see interleaved lines."""

    def __init__(self, path: str, logger=None):
        super().__init__(logger)
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise ConfigError(
                f"output: cannot open {path!r} for appending: {e.strerror}; "
                "give a writable file path, or '-' for stdout"
            ) from None
        # Buffered writer: write() of a BufferedWriter writes everything
        # (a raw FileIO may write partially); flushed per submit.
        self._f = os.fdopen(fd, "ab")

    def _describe(self):
        return self.path

    def _write(self, body):
        self._f.write(body)
        self._f.flush()

    def close(self, deadline_s: float = 5.0) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._f.close()
                except OSError as e:
                    self._log.warning("closing %s: %s", self.path, e)
        self.log_drops_once()


class _Batch:
    """Consecutive bodies for one (category, input), sent as one request.

    ``parts`` holds (body, npoints, seq); seq orders every submitted body so
    that flush() can tell what was queued before it was called. While
    ``sending`` is set the sender thread owns the parts (an HTTP request is
    in flight): submit does not coalesce into it and eviction skips it."""

    __slots__ = ("key", "parts", "nbytes", "npoints", "sending", "encoded")

    def __init__(self, key):
        self.key = key
        self.parts: Deque[Tuple[bytes, int, int]] = collections.deque()
        self.nbytes = 0
        self.npoints = 0
        self.sending = False
        self.encoded: Optional[Tuple[bytes, bool]] = None


class _SpoolFile:
    """One batch on disk. ``sending``: the sender is posting it."""

    __slots__ = ("seq", "key", "npoints", "nbytes", "path", "sending")

    def __init__(self, seq, key, npoints, nbytes, path):
        self.seq = seq
        self.key = key
        self.npoints = npoints
        self.nbytes = nbytes
        self.path = path
        self.sending = False


class HttpSink(Sink):
    """Posts batches to ``<apiserver>/v1/write/<category>`` from one thread."""

    def __init__(
        self,
        apiserver: str,
        *,
        timeout: float = 10.0,
        max_queue_bytes: int = 64 << 20,
        gzip_min_bytes: int = 1024,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        spool_dir: Optional[str] = None,
        spool_max_bytes: int = 256 << 20,
        logger=None,
    ):
        super().__init__(logger)
        self.base_url = _normalize_apiserver(apiserver)
        if not timeout or timeout <= 0:
            raise ConfigError(f"sink timeout must be > 0 seconds, got {timeout!r}")
        if max_queue_bytes <= 0:
            raise ConfigError(f"sink max_queue_bytes must be > 0, got {max_queue_bytes!r}")
        self._timeout = float(timeout)
        self._max_queue = int(max_queue_bytes)
        self._max_batch = max(1, min(int(max_batch_bytes), self._max_queue))
        self._gzip_min = int(gzip_min_bytes)
        self._urls: Dict[Tuple[str, str], str] = {}
        from dkebpf import __version__

        self._user_agent = f"dkebpf/{__version__}"

        self._cv = threading.Condition(self._lock)
        self._q: Deque[_Batch] = collections.deque()
        self._seq = 0
        self._stop = False  # sender: leave the loop
        self._abandoned = False  # close() gave up on an in-flight request
        self._kick = False  # close(): retry now instead of finishing the backoff
        self._close_deadline: Optional[float] = None
        # logging state (rate limits)
        self._fail_since: Optional[float] = None
        self._fail_count = 0
        self._fail_last_log = 0.0
        self._qfull_last_log: Optional[float] = None
        self._answers_logged: set = set()
        self._spool_err_last_log: Optional[float] = None
        # spool: files ordered by seq (oldest first)
        self._spool_dir: Optional[str] = None
        self._spool_max = int(spool_max_bytes)
        self._spool: List[_SpoolFile] = []
        if spool_dir:
            if self._spool_max <= 0:
                raise ConfigError(f"--spool-max-bytes must be > 0, got {spool_max_bytes!r}")
            self._spool_dir = str(spool_dir)
            self._open_spool()

        self._thread = threading.Thread(target=self._run, name="dkebpf-sink", daemon=True)
        self._thread.start()

    # -- producer side --------------------------------------------------------

    def submit(self, category, input_name, body, npoints):
        body = _as_bytes(body)
        npoints = int(npoints)
        size = len(body)
        if not size:  # nothing to send; a count without lines is not a point
            return
        log_qfull = False
        with self._cv:
            self._st["points_submitted"] += npoints
            if self._closed:
                self._count_drop(SHUTDOWN, npoints)
                return
            if size > self._max_queue:
                # Cannot be held without breaking the memory bound.
                self._seq += 1
                if self._spool_dir is None or not self._spool_write(
                    self._seq, (category, input_name), body, npoints
                ):
                    self._count_drop(QUEUE_FULL, npoints)
                    log_qfull = self._qfull_log_due()
            else:
                if self._make_room(size):
                    log_qfull = self._qfull_log_due()
                self._seq += 1
                key = (category, input_name)
                tail = self._q[-1] if self._q else None
                if (
                    tail is None
                    or tail.key != key
                    or tail.sending
                    or tail.nbytes + size > self._max_batch
                ):
                    tail = _Batch(key)
                    self._q.append(tail)
                tail.parts.append((body, npoints, self._seq))
                tail.nbytes += size
                tail.npoints += npoints
                tail.encoded = None
                self._st["points_queued"] += npoints
                self._st["bytes_queued"] += size
                self._cv.notify_all()
            queued = self._st["bytes_queued"]
        if log_qfull:
            self._log.warning(
                "output queue full (%d bytes queued, limit %d): dropping the oldest "
                "points; is DataKit at %s reachable?",
                queued,
                self._max_queue,
                self.base_url,
            )

    def _qfull_log_due(self) -> bool:
        now = time.monotonic()
        if self._qfull_last_log is None or now - self._qfull_last_log >= LOG_EVERY_S:
            self._qfull_last_log = now
            return True
        return False

    def _make_room(self, size: int) -> bool:
        """Drop (or, with a spool, spill to disk) the oldest queued bodies
        until ``size`` more bytes fit. Returns True if points were dropped.
        The batch inside an HTTP request cannot be dropped: the queue may
        then exceed its bound by that one batch until the request returns
        (the sender trims again after a failure). Lock held."""
        dropped = False
        q = self._q
        while self._st["bytes_queued"] + size > self._max_queue:
            idx = 1 if q and q[0].sending else 0
            if idx >= len(q):
                break
            b = q[idx]
            if self._spool_dir is not None and self._spill(b):
                del q[idx]
                continue
            body, n, _seq = b.parts.popleft()
            b.nbytes -= len(body)
            b.npoints -= n
            b.encoded = None
            self._st["bytes_queued"] -= len(body)
            self._st["points_queued"] -= n
            self._count_drop(QUEUE_FULL, n)
            dropped = True
            if not b.parts:
                del q[idx]
        if dropped:
            self._cv.notify_all()
        return dropped

    def _remove_head(self, b: _Batch) -> None:
        # Lock held; b is q[0] (eviction never removes a sending batch).
        if self._q and self._q[0] is b:
            self._q.popleft()
        self._st["points_queued"] -= b.npoints
        self._st["bytes_queued"] -= b.nbytes
        self._cv.notify_all()

    # -- spool ----------------------------------------------------------------

    def _open_spool(self) -> None:
        """Create/check the directory and pick up a previous run's files."""
        d = self._spool_dir
        try:
            os.makedirs(d, exist_ok=True)
            probe = os.path.join(d, f"{_SPOOL_TMP}probe-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"x")
            os.unlink(probe)
            names = sorted(os.listdir(d))
        except OSError as e:
            raise ConfigError(
                f"--spool-dir {d!r}: cannot create or write the directory: "
                f"{e.strerror or e}; give a writable directory or drop --spool-dir"
            ) from None
        found = []
        for name in names:
            path = os.path.join(d, name)
            if name.startswith(_SPOOL_TMP):
                try:  # an interrupted write: incomplete, never renamed
                    os.unlink(path)
                except OSError:
                    pass
                continue
            entry = self._parse_spool_name(name, path)
            if entry is not None:
                found.append(entry)
        found.sort(key=lambda e: e.seq)
        self._spool = found
        n = sum(e.npoints for e in found)
        self._st["points_recovered"] += n
        self._st["points_spooled"] += n
        self._st["spool_bytes"] += sum(e.nbytes for e in found)
        if found:
            self._seq = max(self._seq, found[-1].seq)
            self._log.info(
                "spool %s: %d points in %d files from a previous run will be sent", d, n, len(found)
            )
        self._trim_spool()

    @staticmethod
    def _parse_spool_name(name: str, path: str) -> Optional[_SpoolFile]:
        if not name.endswith(_SPOOL_SUFFIX):
            return None
        parts = name[: -len(_SPOOL_SUFFIX)].split(".")
        if len(parts) != 4 or len(parts[0]) != 20 or not parts[0].isdigit() or not parts[3].isdigit():
            return None
        try:
            size = os.stat(path).st_size
        except OSError:
            return None
        key = (unquote(parts[1]), unquote(parts[2]))
        return _SpoolFile(int(parts[0]), key, int(parts[3]), size, path)

    def _spool_write(self, seq: int, key: Tuple[str, str], body: bytes, npoints: int) -> bool:
        """Write one batch to the spool (lock held). False: not written
        (the caller drops it); spool_full drops are counted here."""
        if len(body) > self._spool_max:
            self._count_drop(SPOOL_FULL, npoints)
            return True
        name = "%020d.%s.%s.%d%s" % (seq, _spool_quote(key[0]), _spool_quote(key[1]), npoints, _SPOOL_SUFFIX)
        path = os.path.join(self._spool_dir, name)
        tmp = os.path.join(self._spool_dir, _SPOOL_TMP + name)
        try:
            with open(tmp, "wb") as f:
                f.write(body)
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            now = time.monotonic()
            if self._spool_err_last_log is None or now - self._spool_err_last_log >= LOG_EVERY_S:
                self._spool_err_last_log = now
                self._log.warning("cannot write to spool %s: %s; dropping points instead", self._spool_dir, e)
            return False
        entry = _SpoolFile(seq, key, npoints, len(body), path)
        # Almost always the newest; a head batch spilled late sorts before.
        i = len(self._spool)
        while i > 0 and self._spool[i - 1].seq > seq:
            i -= 1
        self._spool.insert(i, entry)
        self._st["points_spooled"] += npoints
        self._st["spool_bytes"] += len(body)
        self._trim_spool()
        self._cv.notify_all()
        return True

    def _spool_forget(self, e: _SpoolFile) -> None:
        # Lock held: take e off the spool list and the disk.
        try:
            self._spool.remove(e)
        except ValueError:
            return
        self._st["points_spooled"] -= e.npoints
        self._st["spool_bytes"] -= e.nbytes
        try:
            os.unlink(e.path)
        except OSError:
            pass
        self._cv.notify_all()

    def _trim_spool(self) -> None:
        """Delete the oldest files (not the one being sent) over the cap."""
        i = 0
        while self._st["spool_bytes"] > self._spool_max and i < len(self._spool):
            e = self._spool[i]
            if e.sending:
                i += 1
                continue
            self._spool_forget(e)
            self._count_drop(SPOOL_FULL, e.npoints)

    def _spill(self, b: _Batch) -> bool:
        """Move a whole (not sending) batch from memory to the spool."""
        body = b"".join(p[0] for p in b.parts)
        if not self._spool_write(b.parts[0][2], b.key, body, b.npoints):
            return False
        self._st["points_queued"] -= b.npoints
        self._st["bytes_queued"] -= b.nbytes
        return True

    def flush(self, deadline_s: float) -> bool:
        end = time.monotonic() + max(0.0, deadline_s)
        with self._cv:
            target = self._seq
            while True:
                # The queue and the spool are ordered by seq: their heads
                # hold the oldest pending bodies.
                if (not self._q or self._q[0].parts[0][2] > target) and (
                    not self._spool or self._spool[0].seq > target
                ):
                    return True
                remaining = end - time.monotonic()
                if remaining <= 0 or self._stop:
                    return False
                self._cv.wait(remaining)

    def close(self, deadline_s: float = 5.0) -> None:
        """Deliver what can be delivered within ``deadline_s``, then stop.
        Whatever is left in memory (including a request still in flight,
        whose outcome we no longer wait for) is written to the spool if one
        is configured, else counted as dropped; drops are logged once."""
        end = time.monotonic() + max(0.0, deadline_s)
        with self._cv:
            if self._closed:
                return
            self._close_deadline = end
            self._kick = True  # a sender sleeping in backoff tries once more now
            self._cv.notify_all()
        # Keep a little of the deadline to let the thread leave its loop.
        reserve = min(0.2, max(0.0, deadline_s) / 4)
        self.flush(max(0.0, end - reserve - time.monotonic()))
        with self._cv:
            self._closed = True
            self._stop = True
            self._cv.notify_all()
        self._thread.join(max(0.0, end - time.monotonic()))
        with self._cv:
            if self._thread.is_alive():
                # Stuck in a request: do not wait for it, and make sure it
                # counts nothing when it returns.
                self._abandoned = True
            n = 0
            while self._q:
                b = self._q.popleft()
                b.sending = False
                if self._spool_dir is not None and b.parts and self._spill(b):
                    continue
                n += b.npoints
            if n:
                self._count_drop(SHUTDOWN, n)
            self._st["points_queued"] = 0
            self._st["bytes_queued"] = 0
            self._cv.notify_all()
        self.log_drops_once()

    # -- sender thread ----------------------------------------------------------

    def _url(self, key: Tuple[str, str]) -> str:
        url = self._urls.get(key)
        if url is None:
            category, input_name = key
            url = "%s/v1/write/%s?input=%s&precision=ns" % (
                urlsplit(self.base_url).path,
                quote(category, safe=""),
                quote(input_name, safe=""),
            )
            self._urls[key] = url
        return url

    def _release(self, b) -> None:
        # Lock held: b was delivered or rejected.
        if isinstance(b, _SpoolFile):
            self._spool_forget(b)
        else:
            self._remove_head(b)

    def _encode(self, b: _Batch) -> Tuple[bytes, bool]:
        # Runs outside the lock: parts are frozen while b.sending is set.
        return self._encode_raw(b"".join(p[0] for p in b.parts))

    def _encode_raw(self, raw: bytes) -> Tuple[bytes, bool]:
        if len(raw) > self._gzip_min:
            # Level 1: line protocol compresses ~10x even so, and the CPU
            # of this host is what the collector must spare.
            return gzip.compress(raw, compresslevel=1, mtime=0), True
        return raw, False

    def _run(self) -> None:
        conn = _Connection(self.base_url)
        try:
            self._loop(conn)
        except Exception:  # a bug here must not silently stop delivery
            self._log.exception("output sender thread failed; points are no longer delivered")
            with self._cv:
                self._stop = True
                self._cv.notify_all()
        finally:
            conn.close()

    def _loop(self, conn) -> None:
        failures = 0  # consecutive failed attempts, drives the backoff
        while True:
            with self._cv:
                while not self._q and not self._spool and not self._stop:
                    self._cv.wait()
                if self._stop or self._abandoned:
                    return
                # Oldest first: the spool holds what overflowed memory, but
                # a batch kept in memory (in flight when the rest spilled)
                # may be older.
                if self._spool and (not self._q or self._spool[0].seq < self._q[0].parts[0][2]):
                    b = self._spool[0]
                    encoded = None
                else:
                    b = self._q[0]
                    encoded = b.encoded
                b.sending = True
                timeout = self._timeout
                if self._close_deadline is not None:
                    timeout = max(0.05, min(timeout, self._close_deadline - time.monotonic()))
            spooled = isinstance(b, _SpoolFile)
            if spooled:
                try:
                    encoded = self._encode_raw(_read_file(b.path))
                except OSError as e:
                    with self._cv:
                        b.sending = False
                        if self._abandoned:
                            return
                        self._spool_forget(b)
                        self._count_drop(WRITE_ERROR, b.npoints)
                    self._log.warning("cannot read spool file %s, dropping it: %s", b.path, e)
                    continue
            elif encoded is None:
                encoded = self._encode(b)
            outcome, detail = self._post(conn, b.key, encoded, timeout)

            log_lines: List[Tuple[int, str, tuple]] = []
            with self._cv:
                b.sending = False
                if self._abandoned:
                    return
                if not spooled:
                    b.encoded = encoded
                self._st["requests"] += 1
                if outcome == "sent":
                    self._count_sent(b.npoints, b.nbytes)
                    self._release(b)
                    if self._fail_since is not None:
                        log_lines.append(
                            (
                                logging.INFO,
                                "delivery to %s recovered after %d failed attempts in %.1f s",
                                (self.base_url, self._fail_count, time.monotonic() - self._fail_since),
                            )
                        )
                        self._fail_since = None
                    failures = 0
                    delay = 0.0
                elif outcome == "rejected":
                    status, answer = detail
                    self._st["http_errors"] += 1
                    self._count_drop(REJECTED, b.npoints)
                    self._release(b)
                    sig = (status, answer)
                    if sig not in self._answers_logged and len(self._answers_logged) < _MAX_DISTINCT_ANSWERS:
                        self._answers_logged.add(sig)
                        log_lines.append(
                            (
                                logging.WARNING,
                                "DataKit rejected %d points for %s (HTTP %d), not retrying: %s",
                                (b.npoints, self._url(b.key), status, answer),
                            )
                        )
                    # DataKit answered: the server is up, no backoff.
                    failures = 0
                    delay = 0.0
                else:  # retry
                    self._st["retries"] += 1
                    if outcome == "http_error":
                        self._st["http_errors"] += 1
                    else:
                        self._st["connection_errors"] += 1
                    # The batch may have held the queue (or the spool)
                    # over its bound.
                    self._make_room(0)
                    if self._spool_dir is not None:
                        self._trim_spool()
                    now = time.monotonic()
                    self._fail_count += 1
                    if self._fail_since is None:
                        self._fail_since = now
                        self._fail_count = 1
                        self._fail_last_log = now
                        log_lines.append(
                            (
                                logging.WARNING,
                                "cannot deliver points to %s: %s; retrying with backoff",
                                (self.base_url, detail),
                            )
                        )
                    elif now - self._fail_last_log >= LOG_EVERY_S:
                        self._fail_last_log = now
                        log_lines.append(
                            (
                                logging.WARNING,
                                "still failing to deliver points to %s: %d failed attempts "
                                "in %.0f s, last: %s; %d points queued",
                                (
                                    self.base_url,
                                    self._fail_count,
                                    now - self._fail_since,
                                    detail,
                                    self._st["points_queued"],
                                ),
                            )
                        )
                    delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * (2 ** min(failures, 16)))
                    # Jitter so several collectors restarting with DataKit do
                    # not retry in lockstep.
                    delay = min(BACKOFF_MAX_S, delay * random.uniform(0.8, 1.2))
                    failures += 1
            for level, msg, args in log_lines:
                self._log.log(level, msg, *args)
            if delay > 0:
                self._backoff(delay)

    def _backoff(self, delay: float) -> None:
        end = time.monotonic() + delay
        with self._cv:
            while not self._stop and not self._kick:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return
                self._cv.wait(remaining)
            self._kick = False

    def _post(self, conn, key, encoded, timeout):
        """One request. Returns ("sent"|"rejected"|"retry"|"http_error", detail)."""
        import http.client  # here: a file or stdout sink does not load it (nor ssl)
        body, gzipped = encoded
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "User-Agent": self._user_agent,
        }
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        try:
            status, answer = conn.post(self._url(key), body, headers, timeout)
        except TimeoutError:
            return "retry", f"no answer within {timeout:g} s"
        except (OSError, http.client.HTTPException) as e:
            return "retry", _short_error(e)
        if 200 <= status < 300:
            return "sent", None
        answer = answer[:200].decode("utf-8", "replace").strip()
        if status >= 500 or status in _RETRY_4XX:
            return "http_error", f"HTTP {status}: {answer}" if answer else f"HTTP {status}"
        return "rejected", (status, answer)


class _Connection:
    """One kept-alive HTTP/1.1 connection to DataKit (http.client: the
    stdlib's, ~8 MiB less RSS than requests + urllib3). No proxies, no
    credentials from the environment: DataKit is a local or in-cluster
    agent. A failed request closes the connection; the next one reconnects."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._conn = None

    def post(self, path: str, body: bytes, headers: Dict[str, str], timeout: float) -> Tuple[int, bytes]:
        """(status, the answer's first bytes); raises OSError or HTTPException."""
        import http.client
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=timeout)
        conn = self._conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read(64 << 10)
            if not resp.isclosed():  # an answer longer than read: not kept alive
                self.close()
            return resp.status, answer
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _short_error(e: Exception) -> str:
    # the innermost cause ("[Errno 111] Connection refused") is what a user
    # can act on.
    inner = e
    seen = set()
    while True:
        nxt = getattr(inner, "reason", None) or inner.__cause__ or inner.__context__
        if nxt is None or id(nxt) in seen or not isinstance(nxt, BaseException):
            break
        seen.add(id(nxt))
        inner = nxt
    text = str(inner) or type(inner).__name__
    return f"{type(e).__name__}: {text}"[:300]


def _normalize_apiserver(apiserver: str) -> str:
    """``HOST:PORT`` (DataKit passes it so) or a URL; scheme http unless given."""
    s = (apiserver or "").strip()
    if not s:
        raise ConfigError("datakit_apiserver: empty; give HOST:PORT, e.g. 0.0.0.0:9529")
    if "://" not in s:
        s = "http://" + s
    scheme = s.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"datakit_apiserver: {apiserver!r} has scheme {scheme!r}; use HOST:PORT or an http(s):// URL"
        )
    return s.rstrip("/")


def open_sink(
    output: Optional[str],
    datakit_apiserver: Optional[str],
    *,
    timeout: float = 10.0,
    max_queue_bytes: int = 64 << 20,
    gzip_min_bytes: int = 1024,
    spool_dir: Optional[str] = None,
    spool_max_bytes: int = 256 << 20,
    logger: Optional[logging.Logger] = None,
) -> Sink:
    """``output`` "-" -> stdout, a path -> that file (appended), else
    ``datakit_apiserver`` -> HTTP; neither given -> stdout. ``spool_dir``
    (an on-disk overflow of the queue) is used by the HTTP sink only."""
    if output == "-":
        return StdoutSink(logger)
    if output:
        return FileSink(output, logger)
    if datakit_apiserver:
        return HttpSink(
            datakit_apiserver,
            timeout=timeout,
            max_queue_bytes=max_queue_bytes,
            gzip_min_bytes=gzip_min_bytes,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            logger=logger,
        )
    return StdoutSink(logger)

"""Event-time windows of spans waiting to be linked, kept on disk.

A span belongs to the window of its ``start`` (event time), not of its
arrival: collectors post spans 10-20 s after they happen and at different
delays, and windows by arrival cut traces (the original's weak point).
Every accepted batch is written to ``<data_dir>/<window>/<seq>.arrow`` and
fsynced before the post is answered, so what the linker acknowledged
survives its restart; memory holds the newest windows only while they fit
``memory_spans`` (the rest are read back when their turn comes: spill to
disk). A window is linked once the watermark -- the newest event time seen
minus ``lateness`` -- has passed its end, or when no span arrived for
``lateness`` (then everything pending is linked). Linked spans stay in the
join history for ``horizon`` so later windows' spans find their parents
there: traces may be as long as the horizon, not two windows. That history
is bounded too (``history_spans``): past it the oldest linked spans are
forgotten first (counted; a child arriving for one later is an orphan).

A span arriving for a window already linked is late: linked at once
against the history and counted. A window whose linking fails (a bug) is
moved to ``<data_dir>/failed/`` and counted; later windows go on.
"""
import logging
import os
import shutil
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from sortedcontainers import SortedDict

from .join import History, link

__all__ = ["Windows"]

log = logging.getLogger("dkebpf.linker")


class Windows:
    def __init__(self, data_dir, emit, *, window_s=20.0, lateness_s=20.0, horizon_s=600.0, memory_spans=1_000_000,
                 history_spans=2_000_000, max_disk_bytes=1 << 30, sampling_rate=1.0, match_addresses=True,
                 use_app_trace_id=True, clock=time.monotonic):
        self.dir = data_dir
        self.emit = emit  # emit(table of linked, kept spans)
        self.window_us = int(window_s * 1e6)
        self.lateness_us = int(lateness_s * 1e6)
        self.horizon_windows = max(1, int(horizon_s / window_s))
        self.lateness_s = lateness_s
        self.memory_spans = memory_spans
        self.history_spans = history_spans
        self.max_disk = max_disk_bytes
        self.opts = dict(sampling_rate=sampling_rate, match_addresses=match_addresses,
                         use_app_trace_id=use_app_trace_id)
        self.clock = clock
        self.lock = threading.Lock()
        self.pending = SortedDict()  # window -> [tables in memory, or None once spilled]
        self.cached = 0
        self.disk_bytes = 0
        self.seq = 0
        self.max_event_us = None
        self.last_linked = None  # the newest window linked
        self.last_arrival = clock()
        self.history = History()
        self.counters = dict.fromkeys(("received", "rejected", "late", "orphan", "dropped", "sampled_out",
                                       "written", "windows_linked", "spilled_windows", "quarantined_windows",
                                       "history_evicted"), 0)
        os.makedirs(data_dir, exist_ok=True)
        self._recover()

    def _recover(self):
        """Windows a previous run acknowledged and did not link: pending again."""
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if not name.lstrip("-").isdigit() or not os.path.isdir(path):
                continue
            w = int(name)
            self.pending[w] = None
            for f in os.listdir(path):
                self.disk_bytes += os.path.getsize(os.path.join(path, f))
                self.seq = max(self.seq, int(f.split(".")[0]) + 1 if f.split(".")[0].isdigit() else 0)
        if self.pending:
            log.info("recovered %d windows of acknowledged spans from %s", len(self.pending), self.dir)

    # -- ingest -------------------------------------------------------------

    def add(self, table):
        """Store the spans of `table` (assigning span ids); returns False,
        storing nothing, when the disk budget is full."""
        n = table.num_rows
        if not n:
            return True
        span_id = np.frombuffer(os.urandom(8 * n), np.uint64)
        span_id = np.where(span_id == 0, np.uint64(1), span_id)  # 0 means "no parent"
        table = table.append_column("span_id", pa.array(span_id, pa.uint64()))
        start = np.asarray(table.column("start").cast(pa.int64()).fill_null(0))
        windows = start // self.window_us
        with self.lock:
            if self.disk_bytes + table.nbytes > self.max_disk:
                self.counters["dropped"] += n
                return False
            self.counters["received"] += n
            self.last_arrival = self.clock()
            top = int(start.max())
            self.max_event_us = top if self.max_event_us is None else max(self.max_event_us, top)
            late_rows = []
            distinct = np.unique(windows).tolist()
            for w in distinct:  # (a post usually lands in one window: no copy then)
                part = table if len(distinct) == 1 else table.filter(pa.array(windows == w))
                if self.last_linked is not None and w <= self.last_linked:
                    late_rows.append(part)
                    continue
                self._store(w, part)
            if late_rows:
                late = pa.concat_tables(late_rows, promote_options="default")
                self.counters["late"] += late.num_rows
                self._link(late, self.last_linked)
        return True

    def _store(self, w, part):
        wdir = os.path.join(self.dir, str(w))
        os.makedirs(wdir, exist_ok=True)
        path = os.path.join(wdir, f"{self.seq}.arrow")
        self.seq += 1
        with open(path, "wb") as f:
            with ipc.new_stream(f, part.schema) as writer:
                writer.write_table(part)
            f.flush()
            os.fsync(f.fileno())
        self.disk_bytes += os.path.getsize(path)
        cache = self.pending.get(w, [])
        if cache is not None and self.cached + part.num_rows <= self.memory_spans:
            cache.append(part)
            self.cached += part.num_rows
            self.pending[w] = cache
        else:
            if cache is not None:  # this window leaves memory
                self.cached -= sum(t.num_rows for t in cache)
                self.counters["spilled_windows"] += 1
            self.pending[w] = None  # read back from disk when linked

    # -- linking ------------------------------------------------------------

    def tick(self):
        """Link every window the watermark has passed (all of them after
        `lateness` without arrivals); returns how many were linked."""
        done = 0
        with self.lock:
            idle = self.clock() - self.last_arrival >= self.lateness_s
            while self.pending:
                w = self.pending.peekitem(0)[0]
                if not idle and (self.max_event_us is None
                                 or (w + 1) * self.window_us > self.max_event_us - self.lateness_us):
                    break
                try:
                    self._link_window(w)
                except Exception:  # a bug: keep the spans for a look, let later windows go on
                    self._quarantine(w)
                done += 1
        return done

    def _quarantine(self, w):
        log.exception("linking window %d failed; its spans are kept in %s", w, os.path.join(self.dir, "failed"))
        cache = self.pending.pop(w, None)
        if cache:
            self.cached -= sum(t.num_rows for t in cache)
        wdir = os.path.join(self.dir, str(w))
        if os.path.isdir(wdir):
            size = sum(os.path.getsize(os.path.join(wdir, f)) for f in os.listdir(wdir))
            os.makedirs(os.path.join(self.dir, "failed"), exist_ok=True)
            os.replace(wdir, os.path.join(self.dir, "failed", str(w)))
            self.disk_bytes -= size
        self.counters["quarantined_windows"] += 1

    def _load(self, w):
        cache = self.pending.pop(w)
        wdir = os.path.join(self.dir, str(w))
        if cache is None:
            cache = []
            for f in sorted(os.listdir(wdir), key=lambda x: int(x.split(".")[0])):
                with open(os.path.join(wdir, f), "rb") as fh:
                    cache.append(ipc.open_stream(fh).read_all())
        else:
            self.cached -= sum(t.num_rows for t in cache)
        return pa.concat_tables(cache, promote_options="default"), wdir

    def _link_window(self, w):
        table, wdir = self._load(w)
        self._link(table, w)
        self.last_linked = w if self.last_linked is None else max(self.last_linked, w)
        self.counters["windows_linked"] += 1
        size = sum(os.path.getsize(os.path.join(wdir, f)) for f in os.listdir(wdir))
        shutil.rmtree(wdir)
        self.disk_bytes -= size
        self.counters["history_evicted"] += self.history.prune(w - self.horizon_windows, self.history_spans)

    def _link(self, table, w):
        out, keep, hist, stats = link(table, self.history, window=w, **self.opts)
        self.history.add(hist)
        self.counters["orphan"] += stats["orphan"]
        for name, col in out.items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, col)
        drop = [c for c in ("app_trace_id_l", "app_trace_id_h", "app_parent_id_l") if c in table.column_names]
        table = table.drop_columns(drop)
        if not keep.all():
            table = table.filter(pa.array(keep))
        self.counters["sampled_out"] += int((~keep).sum())
        if table.num_rows:
            self.emit(table)
            self.counters["written"] += table.num_rows

    def flush(self):
        """Link everything pending (at shutdown); a window that fails is
        quarantined as in tick()."""
        with self.lock:
            while self.pending:
                w = self.pending.peekitem(0)[0]
                try:
                    self._link_window(w)
                except Exception:
                    self._quarantine(w)

    def gauges(self):
        """What the linker holds now: spans in memory waiting, linked spans
        kept joinable, bytes on disk, windows pending."""
        with self.lock:
            return {"pending_windows": len(self.pending), "memory_spans": self.cached,
                    "history_spans": len(self.history), "disk_bytes": self.disk_bytes}

"""The collector's lifecycle: prepare the kernel, start plugins, one event
loop over their file descriptors, a flush each interval, clean shutdown on
SIGTERM/SIGINT (detach, flush the last interval, exit 0).

Every call into a plugin goes through its PluginRunner (supervisor.py): a
plugin that fails is restarted or disabled alone. The collector exits
non-zero only when no plugin runs, and flushes the last interval on every
way out."""
import ctypes
import logging
import os
import selectors
import signal
import socket
import time

import pyarrow as pa

from . import kernel, procmem
from .config import options_without_effect
from .debug_server import DebugServer, Metric
from .errors import DkebpfError, UnsupportedError
from .limits import LimitChecker, ResourceLimitExceeded
from .output.sink import open_sink
from .pidfile import Pidfile
from .plugins import L7NET, PLUGIN, names, rows_for
from .plugins.base import PluginContext
from .sampling import Sampler
from .supervisor import WAITING, PluginRunner

log = logging.getLogger("dkebpf")

# glibc's; absent elsewhere (musl), where nothing is tuned or trimmed
_LIBC = ctypes.CDLL(None)
_malloc_trim = getattr(_LIBC, "malloc_trim", None)
_mallopt = getattr(_LIBC, "mallopt", None)
_madvise = getattr(_LIBC, "madvise", None)
if _madvise is not None:
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_DONTNEED = 4
M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD_BYTES = 256 << 10
SHUTDOWN_FLUSH_DEADLINE_S = 10.0
# a predecessor may still be in its shutdown flush: wait that long for it
PIDFILE_WAIT_S = SHUTDOWN_FLUSH_DEADLINE_S + 5.0
LIMIT_CHECK_S = 5.0  # how often cpu/mem/net limits are measured
# how often the libraries' pages are released between flushes too: the
# loop's own work (plugins' steps on whatever traffic the host has) faults
# them back in a folio (~1 MiB) at a time, so idle RSS crept up between
# flushes; a release costs ~1.5 ms of CPU (perf/bench_memory_release.py)
PAGE_RELEASE_S = 5.0
RELEASE_GROWTH_BYTES = 1 << 20  # a folio or two faulted back: not worth a release


def fix_mmap_threshold():
    """glibc raises its mmap threshold (up to 32 MiB) each time a large
    block is freed; from then on an interval's arrays come from the heap
    and stay there, fragmented. A fixed threshold keeps every block above
    it in a mapping of its own, returned to the kernel when freed."""
    if _mallopt is not None:
        _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def use_system_allocator():
    """Arrow buffers from glibc's malloc instead of pyarrow's default
    mimalloc, which reserves ~10 MiB of anonymous memory at its first
    allocation and keeps it; with the fixed mmap threshold the interval's
    large buffers are returned to the kernel when freed. As fast on the
    collector's compute kernels: perf/bench_arrow_pool.py."""
    pa.set_memory_pool(pa.system_memory_pool())


def release_free_memory():
    """After a flush the interval's transient arrays are freed, but both
    allocators keep freed memory for reuse: pyarrow's pool (mimalloc) and
    glibc's heap. Hand it back to the kernel, so that anonymous memory
    follows what is held, not the largest interval seen so far."""
    pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _loaded_code(name):
    """A shared object or the executable: mapped until the process ends
    (CPython never unloads an extension), so the range read from smaps is
    still that file when madvise runs. A data file some thread maps and
    unmaps could be replaced meanwhile by anonymous memory, which
    MADV_DONTNEED would zero."""
    return name.startswith("/") and (".so" in os.path.basename(name) or name == _EXECUTABLE)


_EXECUTABLE = os.path.realpath("/proc/self/exe")


class LibraryPages:
    """Unmaps the resident pages of the libraries' read-only and executable
    mappings; the ones still used fault back in from the page cache on
    their next use. A fault maps a whole page-cache folio (up to ~1 MiB
    on kernel 6.18), so importing numpy and pyarrow leaves ~40 MiB of
    their files resident that the collector never touches again (README
    "Resources"). Only private mappings that are not writable and hold
    no copy-on-write page: their pages are the file's, identical when
    faulted in again.

    Which mappings qualify is read from smaps, which walks every page
    table (~10 ms of CPU): only when the files' lines of /proc/self/maps
    (cheap: no page walk) differ from the last read, i.e. a library was
    loaded or a mapping's protection changed (relocated data turning
    read-only). A private read-only mapping whose line stays the same
    gains no copy-on-write page, except from a debugger or a uprobe
    writing a breakpoint, which the release then drops (harmless for the
    collector: its own code, as the file holds it)."""

    def __init__(self, smaps="/proc/self/smaps", maps="/proc/self/maps", status="/proc/self/status"):
        self.smaps, self.maps, self.status = smaps, maps, status
        self._maps_text = None
        self._ranges = ()
        self._file_rss_after = 0  # RssFile right after the last release
        self.smaps_reads = 0

    def _qualifying(self):
        return tuple((start, end - start) for start, end, perms, name, sizes in procmem.mappings(self.smaps)
                     if perms[1] != "w" and perms[3] == "p" and _loaded_code(name)
                     and sizes.get("Anonymous", 1) == 0)

    def _file_rss(self):
        with open(self.status) as f:
            return procmem.status_sizes(f.read(), ("RssFile",)).get("RssFile", 0)

    def release(self):
        """Returns the file-backed resident bytes released (RssFile before
        minus after: what another thread faults in meanwhile counts
        against it, so 0 at least)."""
        if _madvise is None:
            return 0
        with open(self.maps) as f:
            # the files' mappings only: anonymous ones come and go with
            # every large buffer (glibc maps each block over its threshold)
            text = [line for line in f if " /" in line]
        if text != self._maps_text:
            # read after maps: a change in between is seen at the next call
            self._ranges = self._qualifying()
            self._maps_text = text
            self.smaps_reads += 1
        before = self._file_rss()
        for start, length in self._ranges:
            _madvise(start, length, MADV_DONTNEED)
        self._file_rss_after = self._file_rss()
        return max(0, before - self._file_rss_after)

    def release_if_grown(self, min_bytes):
        """release() once the file-backed RSS has grown by min_bytes since
        the last one (a read of /proc/self/status otherwise): an idle
        collector does not walk its mappings for nothing."""
        if self._file_rss() - self._file_rss_after < min_bytes:
            return 0
        return self.release()


_library_pages = LibraryPages()


def release_library_pages():
    """The process's LibraryPages.release(): the bytes released."""
    return _library_pages.release()


def release_library_pages_if_grown():
    """Between flushes: the process's release once its libraries hold
    RELEASE_GROWTH_BYTES more than after the last one."""
    return _library_pages.release_if_grown(RELEASE_GROWTH_BYTES)


def plugin_factories(cfg, ctx):
    """[(name, factory)] of the plugin-table rows these settings run, in the
    table's start order (sources of enrichment -- conntrack, DNS -- before
    the plugins whose points they enrich, so one interval sees fresh data),
    and a note for each enabled name this version does not build."""
    available = names(PLUGIN, implemented_only=True)
    notes = [f"{n}: not implemented in this version of dkebpf (available: {', '.join(available)})"
             for n in cfg.enabled_plugins if n not in available]
    if "ebpf-net" in cfg.enabled_plugins:
        l7_available = names(L7NET, implemented_only=True)
        notes += [f"ebpf-net: {n} not implemented in this version of dkebpf"
                  for n in cfg.l7net_enabled if n not in l7_available]
    return [_factory(row, ctx) for row in rows_for(cfg.enabled_plugins, cfg.l7net_enabled)], notes


def _factory(row, ctx):
    try:
        plugin_class = row.plugin_class()
    except DkebpfError as exc:  # a broken install: that plugin fails to start, alone
        def broken(exc=exc):  # bound now: `exc` is unset after the except block
            raise exc
        return row.label.replace("`", ""), broken
    return plugin_class.name, lambda: plugin_class(ctx)


class Agent:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.runners = []
        self.sink = None
        self.global_tags = {"host": cfg.hostname, "service": cfg.service, **cfg.tags}
        self.flushes = 0
        self.sampler = Sampler(cfg.sampling_rate, cfg.sampling_rate_pts_per_min)
        self.limits = LimitChecker(cfg.cpu_limit, cfg.mem_limit, cfg.net_limit, proc=cfg.host_proc)
        self.exit_error = None  # raised after the last flush and the detach
        self.errors = {"limit_check": 0, "submit": 0}  # failures outside any plugin
        self.k8s = None

    def _on_signal(self, signum, frame):
        self.stopping = True

    def runner(self, name, factory):
        """A PluginRunner on this agent's selector, salvaging into its sink."""
        return PluginRunner(name, factory, self.selector,
                            lambda r, batches: self._submit(r, batches, time.time_ns()), logger=log)

    def run(self):
        from ._lineproto import encode_batch  # noqa: F401  (fail early on a broken build)

        with Pidfile(self.cfg.pidfile, log, wait_s=PIDFILE_WAIT_S):
            kernel.ensure_mounts()
            kernel.raise_memlock()
            fix_mmap_threshold()
            use_system_allocator()
            ctx = PluginContext(cfg=self.cfg, logger=log, self_pid=os.getpid())
            factories, not_built = plugin_factories(self.cfg, ctx)
            if not factories:
                raise UnsupportedError("nothing to run: " + "; ".join(not_built))
            for note in not_built:
                log.warning("%s; the other plugins run", note)
            self.runners = [self.runner(name, factory) for name, factory in factories]
            # the API is watched only when a plugin's points carry Kubernetes tags
            if any("k8s" in row.needs for row in rows_for(self.cfg.enabled_plugins, self.cfg.l7net_enabled)):
                # imported only then: requests, urllib3 and the API client are ~15 MiB of RSS
                from .enrich.k8s import K8sEnrichment
                ctx.k8s = self.k8s = K8sEnrichment.from_config(self.cfg, log)
            self.sink = open_sink(self.cfg.output, self.cfg.datakit_apiserver, spool_dir=self.cfg.spool_dir,
                                  spool_max_bytes=self.cfg.spool_max_bytes, logger=logging.getLogger("dkebpf.output"))
            debug = None
            wake_r, wake_w = socket.socketpair()
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
            old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                if self.cfg.pprof_port:  # off unless a port is configured
                    debug = DebugServer(self.cfg.pprof_host, self.cfg.pprof_port, self.metrics, logger=log)
                    try:
                        debug.start()
                    except DkebpfError as exc:  # a debugging aid must not cost the data
                        log.warning("%s; running without the debug server", exc)
                        debug = None
                if self.k8s is not None:
                    try:
                        self.k8s.start()
                    except Exception as exc:  # tags are an extra: the points go on without them
                        log.warning("kubernetes: no pod, service or workload tags: start failed: %s: %s",
                                    type(exc).__name__, exc)
                        self._stop_k8s(ctx)
                self._start_plugins()
                self._loop(wake_r)
            finally:
                self._last_flush()  # on every way out: signal, limit, error, no plugin left
                for r in self.runners:
                    r.stop()
                self._stop_k8s(ctx)
                self.sink.close(SHUTDOWN_FLUSH_DEADLINE_S)
                if debug is not None:
                    debug.close()
                signal.set_wakeup_fd(old_wakeup)
                for s, h in old_handlers.items():
                    signal.signal(s, h)
                wake_r.close()
                wake_w.close()
                self.selector.close()
        if self.exit_error is not None:
            raise self.exit_error  # after the flush and the detach: exits with its own status
        log.info("dkebpf stopped")
        return 0

    def _start_plugins(self):
        for r in self.runners:
            r.start()
        running = [r for r in self.runners if r.running]
        if not running:
            failed = "; ".join(f"{r.name}: {r.reason}" for r in self.runners)
            unsupported = not any(r.alive for r in self.runners)
            raise (UnsupportedError if unsupported else DkebpfError)(f"no plugin could start: {failed}")
        active = {r.name.split("/")[0] for r in running} | ({"kubernetes"} if self.k8s is not None else set())
        inert = options_without_effect(self.cfg, active)
        if inert:
            log.warning("options without effect in this build or with these plugins: %s",
                        ", ".join(inert))
        log.info("dkebpf started: plugins %s, interval %gs, output %s",
                 ", ".join(r.name for r in running), self.cfg.interval,
                 self.cfg.output or self.cfg.datakit_apiserver or "-")

    def _stop_k8s(self, ctx):
        if self.k8s is not None:
            try:
                self.k8s.stop()
            except Exception as exc:
                log.error("stopping the kubernetes watch: %s", exc)
            ctx.k8s = self.k8s = None

    def _last_flush(self):
        try:
            self.flush(last=True)
        except Exception:  # what can still go out must not wait on a bug here
            log.exception("flushing the last interval failed")

    def _loop(self, wake_r):
        sel = self.selector
        sel.register(wake_r, selectors.EVENT_READ, None)
        interval = self.cfg.interval
        next_flush = time.monotonic() + interval
        next_limit_check = time.monotonic()
        next_release = time.monotonic() + PAGE_RELEASE_S
        try:
            while not self.stopping:
                now = time.monotonic()
                for r in self.runners:
                    if r.restart_due(now):
                        r.start()
                if not any(r.alive for r in self.runners):
                    self.exit_error = DkebpfError("every plugin failed and was disabled: " + "; ".join(
                        f"{r.name}: {r.reason}" for r in self.runners))
                    log.error("%s; exiting", self.exit_error)
                    return
                if self.limits.enabled and now >= next_limit_check:
                    next_limit_check += LIMIT_CHECK_S
                    try:
                        self.limits.check()
                    except ResourceLimitExceeded as exc:
                        log.error("%s: flushing, detaching and exiting", exc)
                        self.exit_error = exc
                        return
                    except Exception as exc:  # a /proc read failed: measured again next time
                        self.errors["limit_check"] += 1
                        log.warning("resource limit check failed: %s: %s", type(exc).__name__, exc)
                if now >= next_release:
                    next_release = now + PAGE_RELEASE_S
                    release_library_pages_if_grown()
                wake_at = min([next_flush, next_release] + [r.retry_at for r in self.runners if r.state == WAITING]
                              + ([next_limit_check] if self.limits.enabled else []))
                timeout = max(0.0, wake_at - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.data is None:
                        try:
                            wake_r.recv(512)
                        except BlockingIOError:
                            pass
                        continue
                    if key.data.on_readable(key.fileobj):  # the plugin asks to be flushed now
                        self.flush(only=key.data)
                now = time.monotonic()
                if now >= next_flush:
                    self.flush()
                    next_flush += interval
                    if next_flush <= now:  # a flush took longer than an interval
                        next_flush = now + interval
        finally:
            sel.unregister(wake_r)

    def metrics(self):
        """The collector's own metrics for the debug endpoint."""
        out = [Metric("flushes_total", "counter", "intervals flushed", [({}, self.flushes)]),
               Metric("sampling_rate", "gauge", "fraction of points kept", [({}, self.sampler.rate())])]
        out += [
            Metric("plugin_running", "gauge", "1 while the plugin runs",
                   [({"plugin": r.name}, int(r.running)) for r in self.runners]),
            Metric("plugin_disabled", "gauge", "1 once the plugin was given up on",
                   [({"plugin": r.name}, int(not r.alive)) for r in self.runners]),
            Metric("plugin_restarts_total", "counter", "restarts after a failure",
                   [({"plugin": r.name}, r.restarts) for r in self.runners]),
            Metric("plugin_failures_total", "counter", "failures in a plugin's start, on_readable or collect",
                   [({"plugin": r.name, "stage": stage}, n) for r in self.runners
                    for stage, n in sorted(r.failures_by_stage.items())]),
            Metric("errors_total", "counter", "failures outside the plugins (limit checks, encoding/sending)",
                   [({"stage": k}, v) for k, v in sorted(self.errors.items())]),
        ]
        for r in self.runners:
            for name, value in sorted(r.counters().items()):
                out.append(Metric(f"plugin_{name}", "counter", f"{name} of a plugin",
                                  [({"plugin": r.name}, value)]))
        held = [({"plugin": r.name, "holder": k}, v) for r in self.runners for k, v in sorted(r.memory().items())]
        if held:
            out.append(Metric("plugin_memory_bytes", "gauge", "bytes a plugin holds in user space", held))
        if self.k8s is not None:
            for name, value in sorted(self.k8s.counters().items()):
                kind = "gauge" if name.startswith("objects_") else "counter"
                out.append(Metric(f"k8s_{name}", kind, f"kubernetes {name.replace('_', ' ')}", [({}, value)]))
        if self.sink is not None:
            for name, value in sorted(self.sink.stats().items()):
                kind = "gauge" if name in ("points_queued", "bytes_queued") else "counter"
                out.append(Metric(f"output_{name}", kind, f"output {name.replace('_', ' ')}", [({}, value)]))
        for name, value in self.limits.sample().items():
            if value is not None:
                out.append(Metric(f"limit_measured_{name}", "gauge", f"last measured {name}", [({}, value)]))
        return out

    def flush(self, only=None, last=False):
        """Collect, sample, encode and submit every plugin's points; with
        ``only`` (a runner), just that plugin's (an early flush it asked
        for), which does not end the interval; ``last``: the one before
        the collector stops (plugins hand over what they hold back)."""
        now_ns = time.time_ns()
        for r in (self.runners if only is None else [only]):
            self._submit(r, r.collect(now_ns, last), now_ns)
            # the loop does not watch the rings meanwhile: let each plugin
            # empty its kernel rings into its bounded buffers, so a fast
            # source does not fill its ring during a long flush
            for other in self.runners:
                other.drain()
        if only is not None:
            return
        release_free_memory()
        # after every flush, not only the first: a flush faults the library
        # pages it runs back in, a whole page-cache folio (up to ~1 MiB) per
        # fault, and they would stay until the next release (files 29 MiB
        # after the first, 56 by the second flush). Cheap: ~1.5 ms of CPU (a
        # read of /proc/self/maps, madvise calls) and the next flush's
        # faults (perf/bench_memory_release.py, README "Resources")
        log.debug("released %d bytes of libraries' resident pages", release_library_pages())
        self.flushes += 1
        self.sink.log_drops_once()
        if log.isEnabledFor(logging.DEBUG):
            for r in self.runners:
                log.debug("%s counters: %s", r.name, r.counters())

    def _submit(self, runner, batches, now_ns):
        """Sample, encode and hand one plugin's PointBatches to the sink;
        a batch that fails is logged and counted, the others still go."""
        from ._lineproto import encode_batch

        for b in batches:
            try:
                try:
                    # keyed on the tags: a flow is kept or dropped as a whole within an interval
                    # (logs such as bash have no tag columns: each line is its own key)
                    b.batch = self.sampler.apply(b.measurement, b.batch, b.tags or b.fields, self.flushes)
                except DkebpfError as exc:
                    log.error("%s: sampling failed, sending unsampled: %s", runner.name, exc)
                if b.batch.num_rows == 0:
                    continue
                tags = {**self.global_tags, **b.const_tags}
                body, skipped = encode_batch(b.measurement, b.batch, b.tags, b.fields, tags, now_ns,
                                             b.timestamp_column)
                self.sink.submit(b.category, b.input_name, body, b.batch.num_rows - skipped)
            except Exception:
                self.errors["submit"] += 1
                log.exception("%s: encoding or sending %s points failed", runner.name, b.measurement)

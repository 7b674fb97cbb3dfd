"""The collector's lifecycle: prepare the kernel, start plugins, one event
loop over their file descriptors, a flush each interval, clean shutdown on
SIGTERM/SIGINT (detach, flush the last interval, exit 0)."""
import logging
import os
import selectors
import signal
import socket
import time

from . import kernel
from .debug_server import DebugServer, Metric
from .enrich.k8s import K8sEnrichment
from .errors import DkebpfError, UnsupportedError
from .limits import LimitChecker, ResourceLimitExceeded
from .output.sink import open_sink
from .plugins import L7NET, PLUGIN, names, rows_for
from .plugins.base import PluginContext
from .sampling import Sampler

log = logging.getLogger("dkebpf")

SHUTDOWN_FLUSH_DEADLINE_S = 10.0
LIMIT_CHECK_S = 5.0  # how often cpu/mem/net limits are measured


def build_plugins(cfg, ctx):
    """Plugin objects for cfg.enabled_plugins / cfg.l7net_enabled, from the
    plugin table, in its start order (sources of enrichment -- conntrack,
    DNS -- before the plugins whose points they enrich, so one interval sees
    fresh data); refuses a plugin that is not built yet."""
    available = names(PLUGIN, implemented_only=True)
    missing = [n for n in cfg.enabled_plugins if n not in available]
    if missing:
        raise UnsupportedError(
            f"plugin{'s' if len(missing) > 1 else ''} {', '.join(missing)} not implemented in this "
            f"version of dkebpf (available: {', '.join(available)}); remove "
            f"{'them' if len(missing) > 1 else 'it'} from --enabled / enabled_plugins")
    if "ebpf-net" in cfg.enabled_plugins:
        l7_missing = [n for n in cfg.l7net_enabled if n not in names(L7NET, implemented_only=True)]
        if l7_missing:
            log.warning("ebpf-net: %s not implemented in this version", ", ".join(l7_missing))
    return [row.plugin_class()(ctx) for row in rows_for(cfg.enabled_plugins, cfg.l7net_enabled)]


class Pidfile:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        if not self.path:
            return self
        try:
            with open(self.path) as f:
                old = int(f.read().strip() or 0)
        except (OSError, ValueError):
            old = 0
        if old and old != os.getpid() and os.path.exists(f"/proc/{old}"):
            raise DkebpfError(f"another collector is running (pid {old} in {self.path})")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w") as f:
            f.write(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc):
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


class Agent:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stopping = False
        self.plugins = []
        self.sink = None
        self.global_tags = {"host": cfg.hostname, "service": cfg.service, **cfg.tags}
        self.flushes = 0
        self.sampler = Sampler(cfg.sampling_rate, cfg.sampling_rate_pts_per_min)
        self.limits = LimitChecker(cfg.cpu_limit, cfg.mem_limit, cfg.net_limit, proc=cfg.host_proc)
        self.limit_error = None
        self.k8s = None

    def _on_signal(self, signum, frame):
        self.stopping = True

    def run(self):
        from ._lineproto import encode_batch  # noqa: F401  (fail early on a broken build)

        with Pidfile(self.cfg.pidfile):
            kernel.ensure_mounts()
            kernel.raise_memlock()
            ctx = PluginContext(cfg=self.cfg, logger=log, self_pid=os.getpid())
            self.plugins = build_plugins(self.cfg, ctx)
            # the API is watched only when a plugin's points carry Kubernetes tags
            if any("k8s" in row.needs for row in rows_for(self.cfg.enabled_plugins, self.cfg.l7net_enabled)):
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
                    debug.start()
                if self.k8s is not None:
                    self.k8s.start()
                for p in self.plugins:
                    p.start()
                log.info("dkebpf started: plugins %s, interval %gs, output %s",
                         ", ".join(p.name for p in self.plugins), self.cfg.interval,
                         self.cfg.output or self.cfg.datakit_apiserver or "-")
                self._loop(wake_r)
                self.flush()  # the last, partial interval (also when a limit was exceeded)
            finally:
                for p in self.plugins:
                    try:
                        p.stop()
                    except Exception as exc:  # detaching must go on for the others
                        log.error("stopping %s: %s", p.name, exc)
                if self.k8s is not None:
                    self.k8s.stop()
                self.sink.close(SHUTDOWN_FLUSH_DEADLINE_S)
                if debug is not None:
                    debug.close()
                signal.set_wakeup_fd(old_wakeup)
                for s, h in old_handlers.items():
                    signal.signal(s, h)
                wake_r.close()
                wake_w.close()
        if self.limit_error is not None:
            raise self.limit_error  # after the flush and the detach: exits with its own status
        log.info("dkebpf stopped")
        return 0

    def _loop(self, wake_r):
        sel = selectors.DefaultSelector()
        sel.register(wake_r, selectors.EVENT_READ, None)
        for p in self.plugins:
            for f in p.fileobjs():
                sel.register(f, selectors.EVENT_READ, p)
        interval = self.cfg.interval
        next_flush = time.monotonic() + interval
        next_limit_check = time.monotonic()
        try:
            while not self.stopping:
                if self.limits.enabled and time.monotonic() >= next_limit_check:
                    next_limit_check += LIMIT_CHECK_S
                    try:
                        self.limits.check()
                    except ResourceLimitExceeded as exc:
                        log.error("%s: flushing, detaching and exiting", exc)
                        self.limit_error = exc
                        return
                wake_at = min(next_flush, next_limit_check) if self.limits.enabled else next_flush
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
            sel.close()

    def metrics(self):
        """The collector's own metrics for the debug endpoint."""
        out = [Metric("flushes_total", "counter", "intervals flushed", [({}, self.flushes)]),
               Metric("sampling_rate", "gauge", "fraction of points kept", [({}, self.sampler.rate())])]
        for p in self.plugins:
            for name, value in sorted(p.counters().items()):
                out.append(Metric(f"plugin_{name}", "counter", f"{name} of a plugin",
                                  [({"plugin": p.name}, value)]))
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

    def flush(self, only=None):
        """Collect, sample, encode and submit every plugin's points; with
        ``only``, just that plugin's (an early flush it asked for), which
        does not end the interval."""
        from ._lineproto import encode_batch

        now_ns = time.time_ns()
        for p in (self.plugins if only is None else [only]):
            try:
                batches = p.collect(now_ns)
            except DkebpfError as exc:
                log.error("%s: collect failed: %s", p.name, exc)
                continue
            except Exception:  # a bug in one plugin must not lose the others' data
                log.exception("%s: collect failed", p.name)
                continue
            for b in batches:
                try:
                    # keyed on the tags: a flow is kept or dropped as a whole within an interval
                    # (logs such as bash have no tag columns: each line is its own key)
                    b.batch = self.sampler.apply(b.measurement, b.batch, b.tags or b.fields, self.flushes)
                except DkebpfError as exc:
                    log.error("%s: sampling failed, sending unsampled: %s", p.name, exc)
                if b.batch.num_rows == 0:
                    continue
                tags = {**self.global_tags, **b.const_tags}
                body, skipped = encode_batch(b.measurement, b.batch, b.tags, b.fields, tags, now_ns,
                                             b.timestamp_column)
                self.sink.submit(b.category, b.input_name, body, b.batch.num_rows - skipped)
        if only is not None:
            return
        self.flushes += 1
        self.sink.log_drops_once()
        if log.isEnabledFor(logging.DEBUG):
            for p in self.plugins:
                log.debug("%s counters: %s", p.name, p.counters())

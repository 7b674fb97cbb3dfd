"""Each plugin in its own guard, so that one plugin's failure costs only
that plugin: the agent never calls a plugin directly, only through a
PluginRunner.

A failure in start, on_readable or collect is logged and counted; the
plugin is stopped (its file objects leave the selector first), what it had
collected is handed to ``salvage`` (no data lost), and a fresh instance is
started again after a backoff (1 s, 2 s, 4 s ... RESTART_BACKOFF_MAX_S).
After MAX_FAILURES failures in a row (a run of RESET_AFTER_S without one
clears the count) the plugin is disabled. A plugin the build or the kernel
cannot run (UnsupportedError at start), or a bad option (ConfigError at
start: a netlog_blacklist rule that does not parse), is disabled at once: retrying
cannot help. stop() errors are logged: detaching goes on for the others."""
import logging
import selectors
import time

from .errors import ConfigError, DkebpfError, UnsupportedError

MAX_FAILURES = 5
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 60.0
RESET_AFTER_S = 600.0

RUNNING, WAITING, DISABLED = "running", "waiting", "disabled"


class PluginRunner:
    def __init__(self, name, factory, selector, salvage, logger=None, clock=time.monotonic):
        """``factory()`` builds a new plugin object; ``selector`` is the
        agent's (file objects are registered with this runner as data);
        ``salvage(runner, batches)`` submits what a failing plugin had."""
        self.name = name
        self.factory = factory
        self.selector = selector
        self.salvage = salvage
        self.log = logger or logging.getLogger("dkebpf")
        self.clock = clock
        self.plugin = None
        self.state = WAITING
        self.reason = ""          # why it is waiting or disabled
        self.retry_at = clock()   # when WAITING: the next start attempt
        self.failures = 0         # in a row
        self.failures_by_stage = {}
        self.restarts = 0
        self.started_at = None
        self.registered = []

    # ------------------------------------------------------------ lifecycle
    @property
    def running(self):
        return self.state == RUNNING

    @property
    def alive(self):
        """Running, or to be started again."""
        return self.state != DISABLED

    def start(self):
        """Build and start a plugin object; True when it runs."""
        plugin = None
        try:
            plugin = self.factory()
            plugin.start()
            for f in plugin.fileobjs():
                self.selector.register(f, selectors.EVENT_READ, self)
                self.registered.append(f)
        except Exception as exc:
            self._unregister()
            if plugin is not None:
                self._stop_plugin(plugin)
            # a bad option (a netlog_blacklist rule) stays bad until the config changes: no retry either
            self._failed("start", exc, permanent=isinstance(exc, (UnsupportedError, ConfigError)))
            return False
        if self.started_at is not None:
            self.restarts += 1
            self.log.warning("%s: restarted", self.name)
        self.plugin = plugin
        self.state = RUNNING
        self.reason = ""
        self.started_at = self.clock()
        return True

    def restart_due(self, now):
        return self.state == WAITING and now >= self.retry_at

    def stop(self):
        """Detach for good (the agent is stopping)."""
        plugin, self.plugin = self.plugin, None
        self._unregister()
        if plugin is not None:
            self._stop_plugin(plugin)
        if self.state != DISABLED:
            self.state, self.reason = DISABLED, "stopped"

    # ------------------------------------------------------------ calls
    def on_readable(self, fileobj):
        """The plugin's readable handler; True: flush this plugin now."""
        if self.plugin is None:
            return False
        try:
            return bool(self.plugin.on_readable(fileobj))
        except Exception as exc:
            self._fail_running("on_readable", exc)
            return False

    def collect(self, now_ns, last=False):
        """The plugin's PointBatches of this interval ([] when not running);
        ``last``: the collector stops after this one (Plugin.collect_last)."""
        if self.plugin is None:
            return []
        try:
            return list(self.plugin.collect_last(now_ns) if last else self.plugin.collect(now_ns))
        except Exception as exc:
            self._fail_running("collect", exc, salvage=False)
            return []

    def drain(self):
        """The plugin's drain (between the steps of a flush)."""
        if self.plugin is None:
            return
        try:
            self.plugin.drain()
        except Exception as exc:
            self._fail_running("drain", exc)

    def counters(self):
        if self.plugin is None:
            return {}
        try:
            return dict(self.plugin.counters())
        except Exception as exc:  # a metrics read must not end anything
            self.log.warning("%s: reading counters failed: %s", self.name, exc)
            return {}

    def memory(self):
        if self.plugin is None:
            return {}
        try:
            return dict(self.plugin.memory())
        except Exception as exc:  # a metrics read must not end anything
            self.log.warning("%s: reading memory failed: %s", self.name, exc)
            return {}

    def fileobjs(self):
        return list(self.registered)

    # ------------------------------------------------------------ failures
    def _fail_running(self, stage, exc, salvage=True):
        plugin, self.plugin = self.plugin, None
        self._unregister()
        self._failed(stage, exc)
        if salvage:  # what it had collected so far still goes out
            try:
                batches = list(plugin.collect(time.time_ns()))
            except Exception as collect_exc:
                self.log.warning("%s: its data since the last flush is lost: %s", self.name, collect_exc)
            else:
                self.salvage(self, batches)
        self._stop_plugin(plugin)

    def _failed(self, stage, exc, permanent=False):
        self.failures_by_stage[stage] = self.failures_by_stage.get(stage, 0) + 1
        now = self.clock()
        if stage != "start" and now - self.started_at >= RESET_AFTER_S:
            self.failures = 0  # it had run well for long: a new series
        self.failures += 1
        bug = not isinstance(exc, DkebpfError)  # then the traceback goes to the log too
        text = f"{type(exc).__name__}: {exc}" if bug else str(exc)
        if permanent or self.failures >= MAX_FAILURES:
            self.state = DISABLED
            self.reason = text if permanent else f"{self.failures} failures in a row, the last: {text}"
            self.log.error("%s: %s failed: %s; disabled%s", self.name, stage, text,
                           "" if permanent else f" after {self.failures} failures in a row",
                           exc_info=exc if bug else None)
        else:
            delay = min(RESTART_BACKOFF_S * 2 ** (self.failures - 1), RESTART_BACKOFF_MAX_S)
            self.state, self.reason, self.retry_at = WAITING, text, now + delay
            self.log.error("%s: %s failed: %s; restarting in %gs", self.name, stage, text, delay,
                           exc_info=exc if bug else None)

    def _unregister(self):
        for f in self.registered:
            try:
                self.selector.unregister(f)
            except (KeyError, ValueError, OSError):
                pass
        self.registered = []

    def _stop_plugin(self, plugin):
        try:
            plugin.stop()
        except Exception as exc:
            self.log.error("%s: stopping failed: %s", self.name, exc)

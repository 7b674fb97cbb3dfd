"""List, then watch from the list's resourceVersion, one thread per kind:
the store follows the cluster with one list at start (and after a 410)
instead of the original's full list of everything every 30 s.

A watch that ends (the server's timeoutSeconds, a load balancer, a
restart) is resumed from the last resourceVersion seen -- an event's or a
bookmark's -- so no change is lost; a 410 Gone means that version is no
longer kept: list again (``replace`` drops what disappeared meanwhile).
Errors back off exponentially with jitter (1 s .. 60 s) so that the
DaemonSet's pods do not reconnect in step after an API server restart."""
import ctypes
import random
import threading
import time

from .api import ApiError, Gone

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0


def _trim_heap():
    """A list's pages, parsed and dropped, leave glibc's heap grown by tens
    of MB (a cluster's pods); give the free part back to the system."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Reflector:
    def __init__(self, api, store, kind, path, scope="", params=None, logger=None,
                 backoff=(BACKOFF_MIN_S, BACKOFF_MAX_S)):
        self.api, self.store, self.kind, self.path = api, store, kind, path
        self.scope = scope
        self.params = params or {}
        self.log = logger
        self.stats = dict.fromkeys(("lists", "watch_restarts", "relists_gone", "api_errors", "events"), 0)
        self.backoff_min, self.backoff_max = backoff
        self.synced = threading.Event()
        self.last_error = None
        self._stop = threading.Event()
        self._thread = None
        self.name = f"{kind}{'/' + scope if scope else ''}"

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"k8s-{self.name}", daemon=True)
        self._thread.start()

    def stop(self):
        # a watch blocked in a read ends with the process (daemon thread) or
        # at the server's timeout; nothing waits for it
        self._stop.set()

    def _run(self):
        rv = None
        delay = self.backoff_min
        while not self._stop.is_set():
            try:
                if rv is None:
                    pages = self.api.list(self.path, self.params)
                    n = self.store.replace(self.kind, self.scope, pages)
                    rv = pages.resource_version
                    _trim_heap()
                    self.stats["lists"] += 1
                    if not self.synced.is_set() or self.last_error:
                        self.log.info("kubernetes: %s: %d listed", self.name, n)
                    self.synced.set()
                    self.last_error = None
                began, seen = time.monotonic(), 0
                for typ, obj in self.api.watch(self.path, rv, self.params):
                    seen += 1
                    if self._stop.is_set():
                        return
                    if typ != "BOOKMARK":
                        self.store.apply(self.kind, self.scope, typ, obj)
                        self.stats["events"] += 1
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    delay = self.backoff_min  # the connection works
                self.stats["watch_restarts"] += 1
                if not seen and time.monotonic() - began < self.backoff_min:
                    # a server (or proxy) that ends every watch at once: do not spin
                    self._stop.wait(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, self.backoff_max)
            except Gone as exc:
                self.stats["relists_gone"] += 1
                self.log.info("kubernetes: %s: %s; listing again", self.name, exc)
                rv = None
            except ApiError as exc:
                self.stats["api_errors"] += 1
                msg = str(exc)
                if msg != self.last_error:  # once per distinct problem, not per retry
                    self.log.warning("kubernetes: %s: %s; retrying with backoff", self.name, msg)
                self.last_error = msg
                self._stop.wait(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.backoff_max)
            except Exception:  # a bug must not end the thread silently
                self.stats["api_errors"] += 1
                self.log.exception("kubernetes: %s: unexpected error", self.name)
                self._stop.wait(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.backoff_max)
                rv = None

"""The built-in load: the epoll server and client of ``dkebpf._loadgen``
driven from Python threads (their loops release the GIL)."""
import errno
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import KernelError, kernel_error
from .._loadgen import HIST_BUCKETS, KINDS, Server, bucket_upper_us, run_client

LOAD_KINDS = tuple(KINDS)  # http, conn, udp, dns, https, pkt
UNITS = {"http": "requests/s", "conn": "connections/s", "udp": "flows/s", "dns": "queries/s",
         "https": "requests/s", "pkt": "packets/s"}
# operations in flight: enough to reach the machine's rate unpaced, few
# enough that a paced level does not open thousands of sockets at once
SLOTS = {"http": 32, "conn": 16, "udp": 16, "dns": 8, "https": 32, "pkt": 4}
# the server's counter of each kind's operations (a second, independent count)
SERVED = {"http": "http_requests", "conn": "http_requests", "udp": "udp_echoed", "dns": "dns_answered",
          "https": "http_requests", "pkt": "udp_discarded"}


class LoadServer:
    """``with LoadServer() as srv:`` HTTP, HTTPS, UDP echo and discard, DNS, served by
    one thread; ``srv.addr[kind]`` is the (host, port) a kind of load goes to.

    On loopback (the default) DNS answers on port 53, where dnsflow
    captures, of an address of 127.0.0.0/8 (all of it is loopback) other
    than 127.0.0.1, so that a resolver already on 127.0.0.1:53 is neither
    disturbed nor in the way. With ``netns`` (a netns.VethNamespace) the
    server thread enters that namespace first and everything listens on
    its side of the veth pair."""

    def __init__(self, netns=None):
        self.netns = netns
        self.where = f"veth pair to network namespace {netns.name}" if netns else "loopback"
        self.addr = None
        self._srv = None
        self._error = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-server", daemon=True)

    def _serve(self):
        try:
            if self.netns is not None:
                self.netns.enter_thread()  # this thread only; its sockets live there
                host = dns_host = self.netns.peer_ip
                self._srv = Server(host, dns_host=dns_host, dns_port=53)
            else:
                host = "127.0.0.1"
                self._srv, dns_host = _loopback_server(host)
            ports = self._srv.ports
            self.addr = {"http": (host, ports["http"]), "conn": (host, ports["http"]),
                         "udp": (host, ports["udp"]), "dns": (dns_host, ports["dns"]),
                         "https": (host, ports["https"]), "pkt": (host, ports["pkt"])}
        except Exception as exc:  # re-raised by __enter__ in the caller's thread
            self._error = exc
            return
        finally:
            self._ready.set()
        self._srv.serve()

    def __enter__(self):
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def counters(self):
        return self._srv.counters()

    def served(self, kind):
        """Operations of ``kind`` the server has handled so far."""
        return self._srv.counters()[SERVED[kind]]

    def __exit__(self, *exc):
        if self._srv is None:
            return
        self._srv.stop()
        self._thread.join(10)
        if not self._thread.is_alive():
            self._srv.close()


def _loopback_server(host):
    for i in range(1, 40):
        dns_host = f"127.53.{(os.getpid() + i) % 250 + 1}.{i}"
        try:
            return Server(host, dns_host=dns_host, dns_port=53), dns_host
        except KernelError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise kernel_error("bench server: no free 127.53.x.y:53 for the DNS responder", errno.EADDRINUSE)


@dataclass
class LoadResult:
    kind: str
    target_rate: float      # 0: unpaced
    seconds: float
    done: int
    errors: int
    timeouts: int
    latency_mean_s: float
    latency_p50_s: float
    latency_p99_s: float
    first_error: str

    @property
    def rate(self):
        return self.done / self.seconds if self.seconds > 0 else 0.0


def _percentile(hist, q):
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    idx = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(bucket_upper_us(np.array([min(idx, HIST_BUCKETS - 1)]))[0]) * 1e-6


class Drive:
    """One load level in ``threads`` client threads: ``start()``, then
    ``alive()`` while it runs, then ``result()``."""

    def __init__(self, kind, host, port, rate, seconds, slots=None, threads=1):
        self.kind = kind
        self.rate = rate
        self.seconds = seconds
        slots = slots or SLOTS[kind]
        self._results = [None] * threads
        self._threads = [threading.Thread(target=self._run, name=f"bench-{kind}-{i}", daemon=True,
                                          args=(i, kind, host, port, max(1, slots // threads),
                                                rate / threads, seconds))
                         for i in range(threads)]

    def _run(self, i, *args):
        self._results[i] = run_client(*args)

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def alive(self):
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout=None):
        for t in self._threads:
            t.join(timeout)

    def result(self):
        self.join()
        rs = [r for r in self._results if r is not None]
        hist = sum((r["hist"] for r in rs), np.zeros(HIST_BUCKETS, dtype=np.uint64))
        done = sum(r["done"] for r in rs)
        elapsed = max((r["elapsed_s"] for r in rs), default=self.seconds)
        lat_sum = sum(r["latency_sum_s"] for r in rs)
        return LoadResult(self.kind, self.rate, elapsed, done, sum(r["errors"] for r in rs),
                          sum(r["timeouts"] for r in rs), lat_sum / done if done else float("nan"),
                          _percentile(hist, 0.5), _percentile(hist, 0.99),
                          next((r["first_error"] for r in rs if r["first_error"]), ""))


def drive(kind, host, port, rate, seconds, slots=None, threads=1):
    """Run one level to its end and return its LoadResult."""
    return Drive(kind, host, port, rate, seconds, slots, threads).start().result()

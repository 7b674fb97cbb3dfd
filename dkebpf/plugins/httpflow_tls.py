"""ebpf-net / httpflow-tls: httpflow points for HTTPS served or fetched
through OpenSSL, from the plaintext at SSL_read/SSL_write (TlsProbes).

The same record (struct http_exchange), in-kernel pairing
(bpf/include/http_msg.bpf.h) and aggregation as httpflow: this is an
HttpflowPlugin whose only source is the OpenSSL ring. It runs with or
without "httpflow". Nothing is counted twice: the socket capture of httpflow
sees only the ciphertext of these connections, which never starts like an
HTTP/1.x message, so it reports nothing for them.

A timer fd in the agent's loop triggers the libssl rescan (new processes
with a libssl file not probed yet) every RESCAN_S seconds, independent of
the flush interval."""
import ctypes
import os

from ..errors import kernel_error
from .httpflow import HttpflowPlugin
from .tls_probes import TlsProbes

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC


class _timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _timespec), ("it_value", _timespec)]


class PeriodicTimer:
    """A timerfd (timerfd_create(2)) that becomes readable every period_s:
    a file object the agent's selector can wait on."""

    def __init__(self, period_s):
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            raise kernel_error("timerfd_create", ctypes.get_errno())
        sec = int(period_s)
        ts = _timespec(sec, int((period_s - sec) * 1e9))
        spec = _itimerspec(ts, ts)
        if libc.timerfd_settime(fd, 0, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise kernel_error("timerfd_settime", err)
        self.fd = fd

    def fileno(self):
        return self.fd

    def consume(self):
        """Expirations since the last call (0 when none)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class HttpflowTlsPlugin(HttpflowPlugin):
    name = "ebpf-net/httpflow-tls"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.tls = TlsProbes(self.cfg, self.log, ctx.self_pid)
        self.timer = None

    def start(self):
        self.tls.start(settle_ns=self.knobs()["settle_ns"])
        self.bpf = None  # tls.bpf.o is TlsProbes'; its counters come from there
        self.pipeline.add_ring(self.tls.bpf.rings.events)
        self.open_flush()
        self.timer = PeriodicTimer(self.tls.rescan_s)

    def fileobjs(self):
        return self.pipeline.fileobjs() + ([self.timer] if self.timer else [])

    def on_readable(self, fileobj):
        if fileobj is self.timer:
            self.timer.consume()
            self.tls.rescan(force=True)
        else:
            super().on_readable(fileobj)

    def counters(self):
        c = super().counters()  # the pipeline's (no http.bpf.o here)
        c.update(self.tls.counters())  # tls.bpf.o's ring and drops, libssl files
        return c

    def stop(self):
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        super().stop()
        self.tls.stop()

"""One collector per pidfile. DataKit restarts its child without waiting
for the old one to be gone, and two collectors count every flow twice; a
pid in a stale pidfile may meanwhile belong to another program, which must
not block the start. So the old pid counts only while its command line is
a collector's (dkebpf, datakit-ebpf: ours or the original). An old
collector may still be flushing its last interval after DataKit restarted
(DataKit does not wait for it), so the new one waits ``wait_s`` for it to
exit before refusing: DataKit starts its child once and does not retry."""
import os
import time

from .errors import DkebpfError

# argv words (their base names) that make a process a collector
COLLECTOR_PROGRAMS = ("dkebpf", "datakit-ebpf", "datakit-ebpf.orig")


def collector_cmdline(pid, proc="/proc"):
    """The command line of ``pid`` when it is a running collector, else None."""
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as f:
            words = f.read().split(b"\0")
    except OSError:  # gone (or never was)
        return None
    names = {os.path.basename(w.decode(errors="replace")) for w in words if w}
    if names.isdisjoint(COLLECTOR_PROGRAMS):
        return None
    return " ".join(w.decode(errors="replace") for w in words if w)


class Pidfile:
    """Context manager: refuses to start while the pid in ``path`` is a
    running collector (after waiting ``wait_s`` for it to exit), else writes
    ours (atomically) and removes it on exit. A ``path`` of None does nothing."""

    def __init__(self, path, logger=None, wait_s=0.0):
        self.path = path
        self.logger = logger
        self.wait_s = wait_s
        self.written = False

    def __enter__(self):
        if not self.path:
            return self
        try:
            with open(self.path) as f:
                old = int(f.read().strip() or 0)
        except (OSError, ValueError):
            old = 0
        if old and old != os.getpid():
            cmdline = collector_cmdline(old)
            deadline = time.monotonic() + self.wait_s
            if cmdline is not None and self.wait_s > 0 and self.logger is not None:
                self.logger.info("pidfile %s: waiting up to %gs for collector pid %d to exit",
                                 self.path, self.wait_s, old)
            while cmdline is not None and time.monotonic() < deadline:
                time.sleep(0.2)
                cmdline = collector_cmdline(old)
            if cmdline is not None:
                raise DkebpfError(f"another collector is running (pid {old} in {self.path}: "
                                  f"{cmdline}); not starting a second one")
            if self.logger is not None:
                self.logger.info("pidfile %s: pid %d is not a running collector; replacing it",
                                 self.path, old)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise DkebpfError(f"cannot write pidfile {self.path}: {exc.strerror or exc}") from None
        self.written = True
        return self

    def __exit__(self, *exc):
        if not self.written:
            return
        try:  # only our own: a successor may have replaced it
            with open(self.path) as f:
                mine = int(f.read().strip() or 0) == os.getpid()
            if mine:
                os.unlink(self.path)
        except (OSError, ValueError):
            pass
        self.written = False

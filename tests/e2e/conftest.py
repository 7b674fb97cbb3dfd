"""Run the dkebpf command as a user would, against a DataKit-compatible
receiver on loopback."""
import signal
import subprocess
import sys
import time

import pytest

from support.datakit_receiver import DataKitReceiver


def dkebpf_cmd():
    # `python -m dkebpf` from a neutral directory: the installed package,
    # never the source tree without its compiled parts
    return [sys.executable, "-m", "dkebpf"]


class Collector:
    def __init__(self, tmp_path, receiver):
        self.tmp = tmp_path
        self.receiver = receiver
        self.log = tmp_path / "dkebpf.log"
        self.pidfile = tmp_path / "dkebpf.pid"
        self.proc = None

    def start(self, *extra, interval="2s", output=None, stdout=subprocess.DEVNULL, wait_started=True,
              enabled="ebpf-net"):
        args = [*dkebpf_cmd(), "run", "--enabled", enabled, "--interval", interval,
                "--hostname", "e2e-host", "--tags", "team=net;env=test",
                "--log", str(self.log), "--log-level", "debug", "--pidfile", str(self.pidfile)]
        args += ["--output", output] if output else ["--datakit-apiserver", self.receiver.apiserver]
        args += list(extra)
        self.proc = subprocess.Popen(args, cwd=self.tmp, stdout=stdout, stderr=subprocess.PIPE, text=True)
        if not wait_started:
            return self
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dkebpf exited {self.proc.returncode}: {self.proc.stderr.read()}"
                                   f"\n{self.log.read_text() if self.log.exists() else ''}")
            if self.log.exists() and "dkebpf started" in self.log.read_text():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"dkebpf did not start: {self.log.read_text() if self.log.exists() else ''}")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def log_text(self):
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def receiver():
    with DataKitReceiver() as r:
        yield r


@pytest.fixture
def collector(bpf_ok, tmp_path, receiver):
    c = Collector(tmp_path, receiver)
    yield c
    c.stop()

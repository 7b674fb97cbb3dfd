"""The pidfile refuses a second collector, not an unrelated process that
got the old pid."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from dkebpf.errors import DkebpfError
from dkebpf.pidfile import Pidfile, collector_cmdline


@pytest.fixture
def sleeper(tmp_path):
    """Start a process under a given program name (argv[0]); stopped after the test."""
    procs = []

    def start(name):
        exe = tmp_path / name
        shutil.copy(shutil.which("sleep"), exe)
        p = subprocess.Popen([str(exe), "30"])
        procs.append(p)
        deadline = time.monotonic() + 5
        while not open(f"/proc/{p.pid}/cmdline", "rb").read():  # empty for a moment after exec
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return p.pid
    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_running_collector_blocks_the_start(tmp_path, sleeper):
    path = tmp_path / "datakit-ebpf.pid"
    pid = sleeper("datakit-ebpf")
    path.write_text(f"{pid}\n")
    assert "datakit-ebpf" in collector_cmdline(pid)
    with pytest.raises(DkebpfError, match=f"another collector is running \\(pid {pid} in {path}"):
        Pidfile(str(path)).__enter__()
    assert path.read_text() == f"{pid}\n"


def test_a_collector_on_its_way_out_is_waited_for(tmp_path, sleeper):
    path = tmp_path / "datakit-ebpf.pid"
    pid = sleeper("dkebpf")
    path.write_text(f"{pid}\n")
    threading.Timer(0.5, os.kill, (pid, signal.SIGTERM)).start()
    start = time.monotonic()
    with Pidfile(str(path), wait_s=10):
        assert 0.4 < time.monotonic() - start < 5
        assert path.read_text() == f"{os.getpid()}\n"


def test_a_reused_pid_of_another_program_does_not(tmp_path, sleeper):
    path = tmp_path / "datakit-ebpf.pid"
    pid = sleeper("postgres")
    path.write_text(f"{pid}\n")
    assert collector_cmdline(pid) is None
    with Pidfile(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_a_dead_pid_or_garbage_does_not(tmp_path):
    path = tmp_path / "x.pid"
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    for text in (f"{p.pid}\n", "garbage\n", ""):
        path.write_text(text)
        with Pidfile(str(path)):
            assert path.read_text() == f"{os.getpid()}\n"
        assert not path.exists()


def test_a_successors_pidfile_is_left_alone(tmp_path):
    path = tmp_path / "x.pid"
    with Pidfile(str(path)):
        path.write_text("1\n")  # replaced meanwhile by a successor
    assert path.read_text() == "1\n"

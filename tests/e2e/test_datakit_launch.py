"""The collector as DataKit runs it on a production node: the wheel
(`make wheel`) installed into a DataKit directory by `dkebpf install-datakit`
with the system's python3, the launcher started with DataKit's argv and
environment and no standard output or error. Points must reach DataKit's
default port, and everything the collector has to say must be in the log
file beside it."""
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from dkebpf.plugins import PLUGINS, requirements
from support import datakit_launch, traffic
from support.datakit_receiver import DataKitReceiver
from support.schema import check_point

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("ebpf-net",), ("httpflow",)))]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOT_IMPLEMENTED = [r.name for r in PLUGINS if not r.implemented]
# what every Debian/Ubuntu host has (libc6, and zlib1g: Priority required, dpkg needs it);
# anything else must come with the wheel
BASE_LIBS = ("linux-vdso.so", "libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux",
             "libz.so")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """DKEBPF_WHEEL, else a wheel built now with `make wheel`."""
    given = os.environ.get("DKEBPF_WHEEL")
    if given:
        return given
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run(["make", "-C", REPO, "wheel", f"WHEEL_DIR={out}"], capture_output=True, text=True,
                       timeout=1200)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (whl,) = glob.glob(str(out / "dkebpf-*.whl"))
    return whl


@pytest.fixture(scope="module")
def datakit(bpf_ok, wheel, tmp_path_factory):
    """A DataKit directory whose externals/datakit-ebpf is a stand-in for the
    original binary, then dkebpf installed over it the way the README says."""
    home = tmp_path_factory.mktemp("datakit")
    externals = home / "externals"
    externals.mkdir()
    original = externals / "datakit-ebpf"
    original.write_text("#!/bin/sh\necho the original datakit-ebpf\n")
    original.chmod(0o755)
    # cwd: `python -m` puts it first on sys.path; from the repo root it
    # would run the tree's dkebpf (no extensions built) instead of the wheel's
    p = subprocess.run(["/usr/bin/python3", "-m", "dkebpf", "install-datakit", "--datakit-dir", str(home)],
                       env={"PYTHONPATH": wheel, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                       timeout=600, cwd=home)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (externals / "datakit-ebpf.orig").read_text() == "#!/bin/sh\necho the original datakit-ebpf\n"
    return home


def ldd(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def test_the_wheel_brings_every_library_but_libc(datakit):
    env = datakit / "externals" / "dkebpf"
    exts = glob.glob(str(env / "lib" / "python3*" / "site-packages" / "dkebpf" / "_*.so"))
    assert len(exts) >= 5, exts
    vendored = set()
    for ext in exts:
        for words in ldd(ext):
            name, resolved = words[0], words[2] if len(words) > 2 and words[1] == "=>" else words[0]
            assert "not found" not in " ".join(words), (ext, words)
            if os.path.basename(name).startswith(BASE_LIBS) or name.startswith("/lib64/ld-linux"):
                continue
            # anything else is the wheel's own copy, inside the environment
            assert resolved.startswith(str(env)), (ext, words)
            vendored.add(re.match(r"lib[a-z]+", os.path.basename(name)).group(0))
    assert {"libbpf", "libelf"} <= vendored, vendored


@pytest.fixture
def default_port_receiver():
    """DataKit's default port, on loopback (the collector posts to 0.0.0.0:9529)."""
    try:
        r = DataKitReceiver(host="127.0.0.1", port=9529).start()
    except OSError as exc:
        pytest.fail(f"DataKit's default port 127.0.0.1:9529 is taken ({exc}): stop whatever holds it")
    yield r
    r.stop()


@pytest.fixture
def busy_pprof_port():
    """DataKit's default pprof port held by someone else (if it is not already)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", 6061))
        s.listen()
    except OSError:
        pass  # busy already: just as good
    yield 6061
    s.close()


class Launched:
    """The launcher started as DataKit starts it; stopped with SIGTERM as DataKit stops it."""

    def __init__(self, datakit, conf, prefix=()):
        self.externals = datakit / "externals"
        self.log = self.externals / "datakit-ebpf.log"
        self.pidfile = self.externals / "datakit-ebpf.pid"
        self.proc = datakit_launch.start(self.externals / "datakit-ebpf", conf, "dk-host", prefix)

    def log_text(self):
        return self.log.read_text() if self.log.exists() else ""

    def wait_log(self, needle, timeout=60, start=0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in self.log_text()[start:]:
                return
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log_text()[start:]}"
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not logged:\n{self.log_text()[start:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def launched(datakit):
    started = []

    def launch(conf, prefix=()):
        for f in ("datakit-ebpf.log", "datakit-ebpf.pid"):
            (datakit / "externals" / f).unlink(missing_ok=True)
        started.append(Launched(datakit, conf, prefix))
        return started[-1]
    yield launch
    for lc in started:
        if lc.proc.poll() is None:
            lc.proc.kill()
            lc.proc.wait()


def tcp_exchange(send, reply):
    srv = traffic.tcp_server("127.0.0.1", reply)
    try:
        pid, _, _ = traffic.run_client("tcp-client", "127.0.0.1", srv.info["port"], send)
        srv.wait()
    finally:
        srv.stop()
    return pid


def flows(receiver, pid):
    return [p for p in receiver.points(measurement="netflow") if p.tags.get("pid") == str(pid)]


def test_started_as_datakit_starts_it(datakit, launched, default_port_receiver, busy_pprof_port):
    conf = dict(datakit_launch.DEFAULT_EBPF_CONF,
                enabled_plugins=["ebpf-net", *NOT_IMPLEMENTED[:1]],
                tags={"team": "a,b", "empty": "", "zone": "z1"})
    argv = datakit_launch.datakit_argv(conf, "dk-host")
    assert argv[-2:] == ["--tags", "team=a,b;empty=;zone=z1"] and "--pprof-port" in argv
    dk = launched(conf)
    dk.wait_log("dkebpf started")
    assert dk.pidfile.read_text() == f"{dk.proc.pid}\n"

    # a second start while the first runs (DataKit restarted meanwhile) is refused
    second = datakit_launch.start(dk.externals / "datakit-ebpf", conf, "dk-host")
    assert second.wait(60) != 0
    assert f"another collector is running (pid {dk.proc.pid}" in dk.log_text()
    assert dk.proc.poll() is None and dk.pidfile.read_text() == f"{dk.proc.pid}\n"

    pid = tcp_exchange(4321, 123)
    assert dk.stop() == 0  # DataKit stops it with SIGTERM: the last (only) interval is flushed
    assert not dk.pidfile.exists()
    pts = flows(default_port_receiver, pid)
    assert sum(p.fields["bytes_written"] for p in pts) == 4321, dk.log_text()
    assert sum(p.fields["bytes_read"] for p in pts) == 123
    for p in pts:
        check_point("netflow", p, extra_tags=("team", "zone"))
        assert (p.tags["host"], p.tags["team"], p.tags["zone"]) == ("dk-host", "a,b", "z1")
        assert "empty" not in p.tags

    log = dk.log_text()
    assert re.search(r'WARNING .*--tags: tag "empty=": needs a non-empty key and value; dropped', log)
    assert re.search(r"WARNING .*cannot listen on 127.0.0.1:6061.*running without the debug server", log)
    assert re.search(r"WARNING .*options without effect.*--netlog-metric \(bpf-netlog not running\)", log)
    for plugin in NOT_IMPLEMENTED[:1]:
        assert re.search(rf"WARNING .*{plugin}: not implemented in this version.*the other plugins run", log)
    assert "dkebpf stopped" in log


def test_a_plugin_that_cannot_start_leaves_netflow_running(datakit, launched, default_port_receiver):
    """ebpf-conntrack on a host without nf_conntrack: simulated by hiding
    /proc/sys/net/netfilter (where the module's sysctls live) in a mount
    namespace of the collector's own."""
    conf = dict(datakit_launch.DEFAULT_EBPF_CONF, enabled_plugins=["ebpf-conntrack", "ebpf-net"], pprof_port="")
    hide = ["/usr/bin/unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            '/bin/mount -t tmpfs none /proc/sys/net/netfilter 2>/dev/null; exec "$0" "$@"']
    dk = launched(conf, prefix=hide)
    dk.wait_log("dkebpf started")
    assert re.search(r"ERROR .*ebpf-conntrack: start failed: ebpf-conntrack: nf_conntrack is not loaded.*"
                     r"disabled", dk.log_text())
    pid = tcp_exchange(2222, 11)
    assert dk.stop() == 0
    pts = flows(default_port_receiver, pid)
    assert sum(p.fields["bytes_written"] for p in pts) == 2222, dk.log_text()
    assert "dst_nat_ip" not in pts[0].tags


def test_uninstall_restores_the_original(datakit, wheel, tmp_path):
    home = tmp_path / "dk"
    shutil.copytree(datakit, home, symlinks=True, ignore=shutil.ignore_patterns("dkebpf"))
    p = subprocess.run([sys.executable, "-m", "dkebpf", "install-datakit", "--datakit-dir", str(home),
                        "--uninstall"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = subprocess.run([str(home / "externals" / "datakit-ebpf")], capture_output=True, text=True)
    assert out.stdout == "the original datakit-ebpf\n"
    assert not (home / "externals" / "datakit-ebpf.orig").exists()

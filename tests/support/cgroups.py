"""A cgroup with the path shape containerd gives a Kubernetes container
(systemd driver), for one test, under a directory of the test's own in the
cgroup v2 hierarchy (on hybrid hosts the controller-less one at
/sys/fs/cgroup/unified): processes started in it read, in
/proc/<pid>/cgroup, what they would in a pod. Removed again afterwards."""
import contextlib
import os
import subprocess
import time
import uuid


def cgroup2_root():
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            if fstype == "cgroup2":
                return mnt
    raise RuntimeError("no cgroup v2 hierarchy mounted")


@contextlib.contextmanager
def containerd_cgroup(pod_uid, container_id, qos="besteffort"):
    top = os.path.join(cgroup2_root(), f"dkt-{uuid.uuid4().hex[:6]}")
    uid = pod_uid.replace("-", "_")
    path = os.path.join(top, "kubepods.slice", f"kubepods-{qos}.slice", f"kubepods-{qos}-pod{uid}.slice",
                        f"cri-containerd-{container_id}.scope")
    os.makedirs(path)
    try:
        yield path
    finally:
        _remove(path, top)


@contextlib.contextmanager
def own_cgroup():
    """A cgroup of the test's own (empty, no controllers needed): what runs
    in it is accounted there, e.g. its cpu.pressure. Removed again afterwards."""
    path = os.path.join(cgroup2_root(), f"dkt-{uuid.uuid4().hex[:6]}")
    os.makedirs(path)
    try:
        yield path
    finally:
        with open(os.path.join(path, "cgroup.procs")) as f:
            left = f.read().strip()
        if left:  # a test that failed midway: what it started ends with it
            with open(os.path.join(path, "cgroup.kill"), "w") as f:
                f.write("1")
        _remove(path, path)


def cpu_full_stall_s(cgroup):
    """Seconds during which every runnable task of the cgroup waited for a
    CPU (cpu.pressure "full"): time the machine's other work took from it,
    none its own threads took from each other."""
    with open(os.path.join(cgroup, "cpu.pressure")) as f:
        for line in f:
            if line.startswith("full "):
                return int(line.split("total=")[1]) / 1e6
    raise RuntimeError(f"no full line in {cgroup}/cpu.pressure")


def _remove(path, top):
    """rmdir path and its parents up to and including top."""
    end = time.monotonic() + 10
    d = path
    while d != os.path.dirname(top):
        while True:
            try:
                os.rmdir(d)
                break
            except OSError:  # EBUSY while a process of the test is still exiting
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        d = os.path.dirname(d)


def popen_in(cgroup, args, **kw):
    """args started as a process of the cgroup (it moves itself in before exec)."""
    return subprocess.Popen(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, *args], **kw)

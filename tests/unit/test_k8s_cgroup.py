"""pid -> container id / pod UID from /proc/<pid>/cgroup, every runtime's path shape."""
import os

import pytest

from dkebpf.enrich.k8s.cgroup import CgroupResolver, parse_cgroup

CID = "3f2a" + "0123456789abcdef" * 3 + "0123456789ab"
UID = "0d6c4b0e-2f8a-4c3e-9b1a-7e5f6d4c3b2a"
UID_ = UID.replace("-", "_")


@pytest.mark.parametrize("text", [
    # cgroup v2, systemd driver: containerd, CRI-O, Docker (cri-dockerd)
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
    f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope\n",
    f"0::/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope\n",
    # cgroup v2, cgroupfs driver
    f"0::/kubepods/burstable/pod{UID}/{CID}\n",
    # cgroup v1 (several hierarchies, same path), cgroupfs and systemd
    f"12:pids:/kubepods/besteffort/pod{UID}/{CID}\n11:memory:/kubepods/besteffort/pod{UID}/{CID}\n"
    f"1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}\n",
    f"10:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
    f"cri-containerd-{CID}.scope\n",
    # hybrid: v1 lines and the v2 one
    f"5:devices:/user.slice\n0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
])
def test_kubernetes_shapes_give_container_and_pod(text):
    assert parse_cgroup(text) == (CID, UID)


@pytest.mark.parametrize("text, expected", [
    (f"0::/system.slice/docker-{CID}.scope\n", (CID, None)),   # plain Docker, systemd
    (f"12:memory:/docker/{CID}\n", (CID, None)),                # plain Docker, cgroupfs
    (f"0::/machine.slice/libpod-{CID}.scope\n", (CID, None)),   # Podman
    # CRI-O's monitor process is not in the container
    (f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope\n", (None, UID)),
    ("0::/user.slice/user-0.slice/session-3.scope\n", (None, None)),
    ("0::/\n", (None, None)),
    ("", (None, None)),
])
def test_other_shapes(text, expected):
    assert parse_cgroup(text) == expected


def test_resolver_reads_host_proc_and_keeps_exited_pids(tmp_path):
    (tmp_path / "4242").mkdir()
    f = tmp_path / "4242" / "cgroup"
    f.write_text(f"0::/kubepods/besteffort/pod{UID}/{CID}\n")
    r = CgroupResolver(str(tmp_path), max_pids=2)
    assert r.lookup(4242) == (CID, UID)
    f.write_text("0::/user.slice\n")  # the pid now belongs to another process
    assert r.lookup(4242) == (None, None)
    f.write_text(f"0::/kubepods/besteffort/pod{UID}/{CID}\n")
    r.lookup(4242)
    os.unlink(f)  # exited: its connections are still reported with its pod
    assert r.lookup(4242) == (CID, UID)
    assert r.lookup(1) == (None, None)


def test_resolver_on_this_machine():
    cid, uid = CgroupResolver().lookup(os.getpid())  # not in a container here: a plain answer, no error
    assert cid is None or len(cid) == 64


@pytest.mark.requires("proc_events", "cgroup2")
def test_process_events_catch_a_process_that_is_gone(tmp_path):
    """The kernel's process-events connector (root): a process started in a
    containerd-shaped cgroup and exited is still known."""
    import logging
    import subprocess
    import time

    from dkebpf.enrich.k8s.cgroup import ProcessEvents
    from support.cgroups import containerd_cgroup, popen_in

    r = CgroupResolver()
    ev = ProcessEvents(r, logging.getLogger("test"))
    assert ev.start()
    try:
        with containerd_cgroup(UID, CID) as cg:
            p = popen_in(cg, ["true"])
            p.wait(10)
            end = time.monotonic() + 5
            while p.pid not in r.cache and time.monotonic() < end:
                time.sleep(0.01)
        assert not os.path.exists(f"/proc/{p.pid}")
        assert r.lookup(p.pid) == (CID, UID)
        assert ev.events > 0
        # host processes are not kept
        q = subprocess.Popen(["true"])
        q.wait(10)
        time.sleep(0.2)
        assert q.pid not in r.cache
    finally:
        ev.stop()

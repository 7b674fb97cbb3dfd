"""BpfSkeleton on the real kernel: a half start (a failed attach, a failed
setup step) is rolled back completely: no program, map, link or ring of it
stays open in this process."""
import dataclasses
import os

import pytest

pytestmark = pytest.mark.kernel


def bpf_fds():
    """This process's fds of BPF programs, maps and links and of perf events
    (uprobes), by kind."""
    kinds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:") and ("bpf" in target or "perf_event" in target):
            kinds[target] = kinds.get(target, 0) + 1
    return kinds


def test_failed_setup_rolls_back_links_rings_and_object(bpf_ok):
    from dkebpf.bpf_objects import NETFLOW, BpfSkeleton

    before = bpf_fds()
    seen = {}

    def setup(bpf):
        seen["links"] = len(bpf.links)
        seen["ring"] = bpf.rings.closed.fileno()
        seen["fds"] = bpf_fds()
        raise RuntimeError("setup step failed")

    bpf = BpfSkeleton(NETFLOW)
    with pytest.raises(RuntimeError, match="setup step failed"):
        bpf.start(knobs={"self_tgid": os.getpid()}, setup=setup)
    assert seen["links"] > 0 and seen["ring"] >= 0
    assert seen["fds"].get("anon_inode:bpf_link", 0) >= seen["links"]
    assert bpf_fds() == before
    assert bpf.obj is None and bpf.links == [] and vars(bpf.rings) == {}


def test_failed_attach_rolls_back_what_was_attached(bpf_ok):
    from dkebpf.bpf_objects import TLS, BpfSkeleton
    from dkebpf.errors import KernelError

    # ssl_leave is a uprobe without a target: it cannot attach by its
    # section, after tls_sock_send did
    spec = dataclasses.replace(TLS, attach=("tls_sock_send", "ssl_leave"))
    before = bpf_fds()
    with pytest.raises(KernelError, match="attach ssl_leave") as failed:
        BpfSkeleton(spec).start()
    assert failed.value.errno > 0
    assert bpf_fds() == before


def test_undeclared_knob_is_a_bug_not_a_kernel_error(bpf_ok):
    from dkebpf.bpf_objects import HTTP, BpfSkeleton

    before = bpf_fds()
    with pytest.raises(LookupError, match="wakeup_bytes"):
        BpfSkeleton(HTTP).start(knobs={"wakeup_bytes": 1})
    assert bpf_fds() == before


@pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast", "cgroup2")
def test_a_full_reader_leaves_records_in_the_ring(bpf_ok):
    """A reader holds at most its budget (Ring.buffer_bytes): what does not
    fit stays in the kernel ring and comes with the next take(), none lost."""
    import socket

    from dkebpf import _records
    from dkebpf.bpf_objects import NETFLOW, BpfSkeleton, Ring

    budget = 8
    spec = dataclasses.replace(NETFLOW, rings=(
        Ring("closed", _records.EVENT_DTYPE, buffer_bytes=budget * _records.EVENT_DTYPE.itemsize),))
    conns = 20
    with BpfSkeleton(spec).start(knobs={"self_tgid": 0}) as bpf, socket.socket() as lsn:
        ring = bpf.rings.closed
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(conns)
        port = lsn.getsockname()[1]
        for _ in range(conns):  # both ends of each connection close: two records
            with socket.create_connection(("127.0.0.1", port)) as c, lsn.accept()[0] as s:
                c.sendall(b"x")
                s.recv(1)
        assert ring.poll(200) == budget
        takes = []  # (records, records of this test's connections) per take
        for _ in range(100):  # other processes' connections may close meanwhile
            ev = ring.take()
            if not len(ev):
                break
            ours = (ev["stats"]["lport"] == port) | (ev["key"]["rport"] == port)
            takes.append((len(ev), int(ours.sum())))
        counters = bpf.counters()
    assert all(n <= budget for n, _ in takes), takes
    assert sum(mine for _, mine in takes) == 2 * conns, takes
    assert counters["kernel_drop_closed_ring_full"] == 0, counters

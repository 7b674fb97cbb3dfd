"""One UTF-8 policy for process names: netflow and httpflow turn the same
kernel comm bytes into the same process_name, U+FFFD for each maximal
ill-formed subpart (what Python's bytes.decode("utf-8", "replace") gives).

Both plugins' aggregation code runs on hand-made rows that carry the same
comm; only the attributes aggregate() reads are given (no kernel needed)."""
import types

import numpy as np
import pyarrow as pa
import pytest

from dkebpf import _records
from dkebpf._conntable import DELTA_DTYPE, delta_to_arrow
from dkebpf.enrich.addr import LocalAddressResolver
from dkebpf.plugins.httpflow import HttpflowPlugin
from dkebpf.plugins.netflow import netflow_finish, netflow_partial

# comm as the kernel keeps it: at most 15 bytes and a NUL, any bytes
COMMS = [
    b"nginx",                      # valid ASCII
    "caf\u00e9-\u6f22\u5b57".encode(),  # valid multi-byte
    b"caf\xc3",                    # cut inside a 2-byte character (PR_SET_NAME cuts at 15)
    b"\xe6\xbc\xa2\xe5\xad",       # a 3-byte character cut after 2 bytes: one U+FFFD
    b"a\x80\x80b",                 # lone continuation bytes: one U+FFFD each
    b"\xc0\xafx",                  # overlong '/': two U+FFFD
    b"\xed\xa0\x80z",              # a surrogate: three U+FFFD
    b"\xf4\x90\x80\x80",           # above U+10FFFF
    b"\xff" * 15,                  # 15 invalid bytes: the longest output (45 bytes)
]


def stand_in():
    """What partial() reads from its plugin: no DNS, no NAT, no Kubernetes."""
    return types.SimpleNamespace(ephemeral_port=32768, resolver=LocalAddressResolver(),
                                 ctx=types.SimpleNamespace(domains=None, nat=None, k8s=None))


def rows_common(i):
    return dict(pid=1000 + i, family=4, proto=6, direction=1, lport=40000 + i, rport=80,
                laddr=b"\x7f\0\0\x01".ljust(16, b"\0"), raddr=b"\x7f\0\0\x02".ljust(16, b"\0"))


def netflow_names():
    d = np.zeros(len(COMMS), DELTA_DTYPE)
    for i, comm in enumerate(COMMS):
        for k, v in rows_common(i).items():
            d[i][k] = v
        d[i]["comm"] = comm
        d[i]["d_bytes_sent"] = 1
    plugin = stand_in()
    batch = netflow_finish([netflow_partial(delta_to_arrow(d), plugin.ephemeral_port, plugin.resolver,
                                            plugin.ctx.domains, plugin.ctx.nat)], plugin.ctx.k8s)
    return dict(zip(batch.column("pid").to_pylist(), batch.column("process_name").to_pylist()))


def httpflow_names():
    n = len(COMMS)
    rows = {k: pa.array([rows_common(i)[k] for i in range(n)]) for k in ("pid", "family", "proto",
                                                                      "direction", "lport", "rport")}
    for k in ("laddr", "raddr"):
        rows[k] = pa.array([rows_common(i)[k] for i in range(n)], pa.binary(16))
    rows["comm"] = pa.array([c.ljust(16, b"\0") for c in COMMS], pa.binary(16))
    rows.update(method=pa.array(["GET"] * n), path=pa.array(["/"] * n), status_code=pa.array([200] * n),
                http_version=pa.array(["1.1"] * n), truncated=pa.array([False] * n),
                latency_count=pa.array([1] * n), latency_sum=pa.array([1000] * n),
                bytes_read_sum=pa.array([20] * n), bytes_written_sum=pa.array([10] * n))
    batch = HttpflowPlugin.aggregate(stand_in(), [pa.table(rows)])
    return dict(zip(batch.column("pid").to_pylist(), batch.column("process_name").to_pylist()))


def test_netflow_and_httpflow_give_one_process_name():
    # pid is a tag (a string) in both measurements
    expected = {str(1000 + i): c.decode("utf-8", "replace") for i, c in enumerate(COMMS)}
    assert expected[str(1000 + COMMS.index(b"caf\xc3"))] == "caf\ufffd"
    assert netflow_names() == expected
    assert httpflow_names() == expected


def test_comm_to_arrow_rejects_other_widths():
    with pytest.raises(TypeError, match="16-byte names"):
        _records.comm_to_arrow(np.zeros(3, "S8"))

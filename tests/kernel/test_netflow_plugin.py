"""The netflow plugin over the real netflow.bpf.o, interval after interval:
what the map merge and the idle eviction make of real connections."""
import logging
import os
import time
import types
from collections import Counter

import pytest

from support import traffic

pytestmark = pytest.mark.kernel


@pytest.fixture
def plugin(bpf_ok):
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.netflow import NetflowPlugin

    cfg = types.SimpleNamespace(interval=1.0, ipv6_disabled=False, ephemeral_port=0, host_proc="/proc")
    p = NetflowPlugin(PluginContext(cfg=cfg, logger=logging.getLogger("test"), self_pid=os.getpid()))
    p.start()
    yield p
    p.stop()


def totals(batches, pid):
    """Sums of the numeric fields of one process's points."""
    out = Counter()
    for pb in batches:
        rows = pb.batch.to_pylist()
        for r in rows:
            if r["pid"] == str(pid):
                for f in ("bytes_read", "bytes_written", "tcp_closed", "tcp_established"):
                    out[f] += r[f]
    return out


def test_tcp_connection_idle_longer_than_eviction_closes_once(plugin):
    """A pooled connection: data, then idle for longer than the idle
    threshold (several intervals), then closed without another byte. Both
    ends report it established once and closed once, with every byte."""
    plugin.idle_ns = 300_000_000  # the threshold the interval would give, made short
    srv = traffic.tcp_server("127.0.0.1", 0)
    batches = []
    try:
        client = traffic.Proc(["tcp-client", "127.0.0.1", srv.info["port"], 30000, 1, 0, 2.0])
        end = time.monotonic() + 20
        while client.p.poll() is None and time.monotonic() < end:
            plugin.on_readable(None)
            batches += plugin.collect(time.time_ns())
            time.sleep(0.25)
        client.wait()
        srv.wait()
        for _ in range(3):  # the close, and the records taken out meanwhile
            time.sleep(0.3)
            plugin.on_readable(None)
            batches += plugin.collect(time.time_ns())
    finally:
        srv.stop()
    c = totals(batches, client.pid)
    s = totals(batches, srv.pid)
    assert (c["bytes_written"], c["bytes_read"], c["tcp_established"], c["tcp_closed"]) == (30000, 0, 1, 1)
    assert (s["bytes_read"], s["bytes_written"], s["tcp_established"], s["tcp_closed"]) == (30000, 0, 1, 1)

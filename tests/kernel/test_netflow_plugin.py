"""The netflow plugin over the real netflow.bpf.o, interval after interval:
what the map merge and the idle eviction make of real connections."""
import logging
import os
import time
import types
from collections import Counter

import pytest

from support import traffic
from support.tcp_pair import TcpPair

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


def totals(batches, pid, server_port=None):
    """Sums of the numeric fields of one process's points. A server's: its
    incoming points on server_port; an accepted connection's first point
    may have no pid yet (the handshake ends in softirq, the owner is known
    at its first read), so those count too."""
    out = Counter()
    for pb in batches:
        rows = pb.batch.to_pylist()
        for r in rows:
            mine = r["pid"] == str(pid)
            if server_port is not None:
                mine = r["pid"] in (str(pid), "0") and r["src_port"] == str(server_port) \
                    and r["direction"] == "incoming"
            if mine:
                for f in ("bytes_read", "bytes_written", "tcp_closed", "tcp_established"):
                    out[f] += r[f]
    return out


def collect_until(plugin, batches, done, timeout=20.0):
    """Read the ring and collect, adding to batches, until done() holds or
    the (generous) timeout passes: a loaded machine may end a closed
    connection's socket late (softirq deferred to ksoftirqd). Counts only
    grow, so a record too many still shows in the asserts after."""
    def read():
        plugin.on_readable(None)
        batches.extend(plugin.collect(time.time_ns()))
        return done()

    traffic.wait_until(read, timeout, step=0.1)


def at_least(t, want):
    return all(t[k] >= v for k, v in want.items())


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
        # the close, and the records taken out meanwhile
        collect_until(plugin, batches, lambda: at_least(
            totals(batches, client.pid), {"bytes_written": 30000, "tcp_established": 1, "tcp_closed": 1})
            and at_least(totals(batches, srv.pid, srv.info["port"]),
                         {"bytes_read": 30000, "tcp_established": 1, "tcp_closed": 1}))
    finally:
        srv.stop()
    c = totals(batches, client.pid)
    s = totals(batches, srv.pid, srv.info["port"])
    assert (c["bytes_written"], c["bytes_read"], c["tcp_established"], c["tcp_closed"]) == (30000, 0, 1, 1)
    assert (s["bytes_read"], s["bytes_written"], s["tcp_established"], s["tcp_closed"]) == (30000, 0, 1, 1)


def test_closed_connections_are_merged_in_steps(plugin, monkeypatch):
    """Many short connections in one interval: the plugin folds closed
    records into per-key sums whenever the reader holds STEP_RECORDS, so
    it never holds one record per connection for the interval; the
    interval's totals stay exact."""
    from dkebpf.plugins import netflow
    monkeypatch.setattr(netflow, "STEP_RECORDS", 40)
    n, size = 300, 700
    srv = traffic.tcp_server("127.0.0.1", 100, conns=n)
    try:
        client = traffic.Proc(["tcp-many", "127.0.0.1", srv.info["port"], n, size, 0.005])
        most_held = 0
        end = time.monotonic() + 60
        while client.p.poll() is None and time.monotonic() < end:
            plugin.ring.poll(50)  # what the agent's loop does when woken
            plugin.on_readable(None)
            most_held = max(most_held, plugin.ring.held)
        client.wait()
        srv.wait()
    finally:
        srv.stop()
    time.sleep(0.2)
    batches = plugin.collect(time.time_ns())
    # each poll brings the records of a few connections (2 per connection)
    assert plugin.early_steps >= 5 and most_held < 40 + 100, (plugin.early_steps, most_held)
    c, s = totals(batches, client.pid), totals(batches, srv.pid, srv.info["port"])
    assert (c["bytes_written"], c["bytes_read"], c["tcp_established"], c["tcp_closed"]) == (n * size, n * 100, n, n)
    assert (s["bytes_read"], s["bytes_written"], s["tcp_established"], s["tcp_closed"]) == (n * size, n * 100, n, n)
    # one point per netflow key: the client's ephemeral ports fold into '*'
    rows = [r for pb in batches for r in pb.batch.to_pylist() if r["pid"] == str(client.pid)]
    assert len(rows) == 1 and rows[0]["rtt"] > 0


def test_closed_records_wake_the_reader_in_batches(plugin):
    """A closed connection does not wake the agent's loop by itself: an
    edge-triggered epoll on the ring (an event per wake-up, not per record
    present, so other hosts' closes meanwhile do not count) sees none
    while a few dozen connections close; their records are there all the
    same, taken at the interval's end or once many wait."""
    import select
    ep = select.epoll()
    ep.register(plugin.ring.fileno(), select.EPOLLIN | select.EPOLLET)
    ep.poll(0)  # the edge of what is there already
    srv = traffic.tcp_server("127.0.0.1", 10, conns=30)
    try:
        client = traffic.Proc(["tcp-many", "127.0.0.1", srv.info["port"], 30, 10])
        client.wait()
        srv.wait()
        wakeups = ep.poll(0.5)
    finally:
        srv.stop()
        ep.close()
    assert wakeups == [], f"woken {len(wakeups)} times"
    plugin.ring.poll(0)
    assert plugin.ring.held >= 60


def test_a_socket_that_connects_again_is_two_connections(plugin):
    """A client socket disconnects (connect(AF_UNSPEC)) and connects to
    another listener, one interval's read in between each step: the
    kernel keeps both under one socket cookie, as two instances; the
    points count two connections per end, established and closed once
    each, and every byte once."""
    batches = []

    def collect():
        time.sleep(0.2)
        plugin.on_readable(None)
        batches.extend(plugin.collect(time.time_ns()))

    pair = TcpPair("127.0.0.1")
    try:
        pair.do("send 1111")
        pair.do("reply 222")
        collect()
        pair.do("reconnect")
        pair.do("send 30000")
        collect()
        pair.do("reply 40")
    finally:
        pair.close()
    collect()
    collect()
    # both ends are this one process: the sums of the client's and server's
    t = totals(batches, pair.pid)
    assert (t["bytes_written"], t["bytes_read"], t["tcp_established"], t["tcp_closed"]) == \
        (31373, 31373, 4, 4)

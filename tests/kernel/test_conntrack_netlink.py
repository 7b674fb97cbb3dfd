"""ebpf-conntrack on the real kernel: real connections through a real
iptables DNAT rule (host nat OUTPUT, a service address that exists nowhere
-> a server in a test network namespace), seen through ctnetlink events and
dumps, checked exactly in the NAT table: translated entries, untranslated
connections absent, destroy + grace period, the start-up dump, and the
ENOBUFS resynchronisation."""
import logging
import os
import select
import socket
import time
import types

import numpy as np
import pytest

from support import traffic
from support.ctnetlink import delete_entry
from support.dnat import dnat_rule, service_ip
from support.netns import NetNS

pytestmark = [pytest.mark.kernel, pytest.mark.requires("ctnetlink_events")]


def make_plugin():
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.conntrack import ConntrackPlugin
    ctx = PluginContext(cfg=types.SimpleNamespace(interval=2.0), logger=logging.getLogger("test"),
                        self_pid=os.getpid())
    p = ConntrackPlugin(ctx)
    assert ctx.nat is p.table
    return p


@pytest.fixture
def plugin(bpf_ok):
    p = make_plugin()
    p.start()
    finish_dump(p)
    yield p
    p.stop()


def finish_dump(p, timeout=10):
    """Run the plugin's sockets as the agent's loop would until the dump in
    flight has ended."""
    end = time.monotonic() + timeout
    while p.dump_started is not None and time.monotonic() < end:
        ready, _, _ = select.select(p.fileobjs(), [], [], 0.2)
        for f in ready:
            p.on_readable(f)
    assert p.dump_started is None, "the conntrack dump did not finish"


def addr(text):
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return socket.inet_aton(text) + bytes(12)


def lookup(p, conns, proto=6):
    """conns: [(local ip, local port, remote ip, remote port)] -> [(ip, port) | None]"""
    fam = np.array([6 if ":" in c[0] else 4 for c in conns], np.uint8)
    ip, port = p.table.lookup(fam, np.full(len(conns), proto, np.uint8),
                              np.frombuffer(b"".join(addr(c[0]) for c in conns), "V16"),
                              np.array([c[1] for c in conns], np.uint16),
                              np.frombuffer(b"".join(addr(c[2]) for c in conns), "V16"),
                              np.array([c[3] for c in conns], np.uint16))
    return [None if i is None else (i, int(pt)) for i, pt in zip(ip.to_pylist(), port.to_pylist())]


def wait_lookup(p, conns, expected, proto=6, timeout=5):
    def done():
        p.collect(0)
        return lookup(p, conns, proto) == expected
    traffic.wait_until(done, timeout, step=0.05)
    return lookup(p, conns, proto)


@pytest.mark.parametrize("family", [4, 6])
def test_dnat_connection_entry_then_destroy_and_grace(plugin, family):
    p = plugin
    with NetNS() as ns:
        peer, local = (ns.peer_ip, ns.host_ip) if family == 4 else (ns.peer_ip6, ns.host_ip6)
        svc = service_ip(ns, family)
        srv = traffic.tcp_server(peer, 100, prefix=ns.prefix(), conns=2)
        try:
            with dnat_rule(svc, 8080, peer, srv.info["port"]):
                _, _, nat_res = traffic.run_client("tcp-client", svc, 8080, 1000)
                _, _, direct_res = traffic.run_client("tcp-client", peer, srv.info["port"], 1000)
            srv.wait()
        finally:
            srv.stop()
        assert nat_res[-1]["received"] == 100  # the server answered through the rule
        nat_conn = (local, nat_res[-1]["lport"], svc, 8080)
        direct = (local, direct_res[-1]["lport"], peer, srv.info["port"])
        assert wait_lookup(p, [nat_conn, direct], [(peer, srv.info["port"]), None]) == [
            (peer, srv.info["port"]), None]
        # the reverse direction and another protocol are other keys
        assert lookup(p, [(svc, 8080, local, nat_conn[1])]) == [None]
        assert lookup(p, [nat_conn], proto=17) == [None]

        c = p.counters()
        assert c["events_malformed"] == 0 and c["dump_malformed"] == 0
        assert c["events_enobufs"] == 0

        # the kernel removes the entry (as when it times out). Its DESTROY
        # event is queued on our socket before the kernel acknowledges the
        # delete. (Entries of earlier runs, from the start-up dump, may be
        # destroyed meanwhile too: the count only goes up by at least one.)
        destroyed_before = c["nat_destroyed"]
        assert delete_entry(family, (local, svc, 6, nat_conn[1], 8080)) == 0
        p.collect(0)
        assert p.counters()["nat_destroyed"] >= destroyed_before + 1
        # within the grace period netflow's last point still gets its tags
        assert lookup(p, [nat_conn]) == [(peer, srv.info["port"])]
        # after it, the entry is gone (a live one would not expire)
        p.table.grace_ns = 0
        p.collect(0)
        assert lookup(p, [nat_conn]) == [None]


def test_connections_from_before_the_start_come_from_the_dump(bpf_ok):
    with NetNS() as ns:
        svc = service_ip(ns)
        srv = traffic.tcp_server(ns.peer_ip, 10, prefix=ns.prefix())
        try:
            with dnat_rule(svc, 9090, ns.peer_ip, srv.info["port"]):
                _, _, res = traffic.run_client("tcp-client", svc, 9090, 10)
                srv.wait()
                # closed, its conntrack entry stays (TIME_WAIT) and is dumped
                p = make_plugin()
                p.start()
                try:
                    finish_dump(p)
                    conn = (ns.host_ip, res[-1]["lport"], svc, 9090)
                    assert lookup(p, [conn]) == [(ns.peer_ip, srv.info["port"])]
                    c = p.counters()
                    assert c["dumps"] == 1 and c["dump_events"] >= 1 and c["dump_done"] == 1
                    assert c["dump_malformed"] == 0
                finally:
                    p.stop()
        finally:
            srv.stop()


def udp_flows(dst, port, n):
    """n UDP flows, one datagram from each of n sockets kept open (so their
    source ports are distinct): (sockets, source ports)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.sendto(b"x", (dst, port))
    return socks, [s.getsockname()[1] for s in socks]


def test_event_overflow_is_counted_and_a_dump_resynchronises(plugin):
    """With a tiny receive queue, 100 deletes and 200 new connections
    overflow the event socket (ENOBUFS): counted, then a dump brings the
    table back to the kernel's state: every new flow present, every deleted
    one retired (by its event or, lost, by the sweep after the dump)."""
    p = plugin
    with NetNS() as ns:
        svc = service_ip(ns)
        with dnat_rule(svc, 5353, ns.peer_ip, 53, proto="udp"):
            a_socks, a_ports = udp_flows(svc, 5353, 100)
            conns_a = [(ns.host_ip, sp, svc, 5353) for sp in a_ports]
            want = [(ns.peer_ip, 53)] * 100
            assert wait_lookup(p, conns_a, want, proto=17) == want

            p.events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
            for sp in a_ports:
                assert delete_entry(4, (ns.host_ip, svc, 17, sp, 5353)) == 0
            b_socks, b_ports = udp_flows(svc, 5353, 200)
            conns_b = [(ns.host_ip, sp, svc, 5353) for sp in b_ports]

            p.collect(0)
            c = p.counters()
            assert c["events_enobufs"] >= 1 and c["resyncs"] >= 1
            finish_dump(p)
            p.collect(0)
            assert lookup(p, conns_b, proto=17) == [(ns.peer_ip, 53)] * 200
            c = p.counters()
            assert c["nat_resync_removed"] >= 1
            p.table.grace_ns = 0
            p.collect(0)
            assert lookup(p, conns_a, proto=17) == [None] * 100
            assert lookup(p, conns_b, proto=17) == [(ns.peer_ip, 53)] * 200
            for sp in b_ports:  # leave no entries of ours behind
                delete_entry(4, (ns.host_ip, svc, 17, sp, 5353))
            for s in a_socks + b_socks:
                s.close()

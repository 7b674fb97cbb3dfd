"""ConnTable.fold_ring on the real kernel: a spilling packet ring decoded
and folded in one call without the GIL (what bpf-netlog's reader thread
does) gives the table read() and add() give, batch by batch, for the same
packets; it lingers for what comes into the spill, takes at most its
budget, and refuses a ring that does not spill."""
import socket
import threading
import time

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.requires("packet_socket")]


def spilling_ring(ifname):
    from dkebpf import _packets
    from dkebpf.packetfilter import netlog_filter
    ring = _packets.PacketRing(netlog_filter(), block_size=1 << 16, block_nr=8, retire_ms=10,
                               ifindex=socket.if_nametoindex(ifname))
    ring.start_spill()
    return ring


def test_fold_ring_folds_what_read_and_add_fold(bpf_ok):
    """Two rings on the host's end of a test veth (no other traffic there),
    the same connections: one folded by fold_ring (a budget of 2 blocks a
    call), the other read() a block at a time and add()ed."""
    from support.netns import NetNS
    from support.traffic import tcp_server

    from dkebpf import _netlog
    with NetNS() as ns:
        a, b = spilling_ring(ns.veth_host), spilling_ring(ns.veth_host)
        ta, tb = _netlog.ConnTable(), _netlog.ConnTable()
        try:
            srv = tcp_server(ns.peer_ip, 30000, prefix=ns.prefix(), conns=5)
            for i in range(5):
                with socket.create_connection((ns.peer_ip, srv.info["port"]), timeout=10) as c:
                    c.sendall(f"GET /fold/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + b"y" * 3000)
                    c.shutdown(socket.SHUT_WR)
                    while c.recv(65536):
                        pass
            srv.wait(10)
            time.sleep(0.1)   # the last blocks retired (retire_ms 10) and spilled
            while True:
                taken, more = ta.fold_ring(a, 2)
                assert taken <= 2
                if not taken and not more:
                    break
            while True:
                pkts, payload, more = b.read(max_blocks=1)
                if len(pkts):
                    tb.add(pkts, payload)
                if not len(pkts) and not more:
                    break
            now = time.time_ns()
            ga, gb = ta.collect(now, True), tb.collect(now, True)
            ca, cb = a.counters(), b.counters()
        finally:
            a.close()
            b.close()
    assert ca["spill_drops"] == cb["spill_drops"] == ca["kernel_drops"] == cb["kernel_drops"] == 0
    # the kernel's own packets (IPv6 neighbour discovery...) may come between the two drains: the test's
    # connections compared

    def port(chunks):
        return chunks[chunks["rport"] == srv.info["port"]]
    assert len(port(ga.chunks)) >= 5
    for field in ("tx_packets", "rx_packets", "tx_bytes", "rx_bytes", "tx_retrans", "rx_retrans"):
        assert int(port(ga.chunks)[field].sum()) == int(port(gb.chunks)[field].sum())
    assert int(port(ga.chunks)["rx_bytes"].sum()) >= 5 * 30000
    paths = sorted(bytes(x["path"][:x["path_len"]]) for x in ga.exchanges)
    assert paths == sorted(bytes(x["path"][:x["path_len"]]) for x in gb.exchanges)
    assert paths == [f"/fold/{i}".encode() for i in range(5)]
    assert len(ga.messages) == len(ga.chunks)


def test_fold_ring_applies_a_filter_as_keep_and_add_do(bpf_ok):
    """Two rings on the host's end of a test veth, the same connections to
    two servers, a netlog_blacklist dropping the second's: fold_ring with
    the filter gives the table (and the filter's counts) that read(),
    ConnFilter.keep() and add() give."""
    from support.netns import NetNS
    from support.traffic import tcp_server

    from dkebpf import _netlog
    from dkebpf.netlog.conn_filter import ConnFilter
    from dkebpf.netlog.filter import parse_rules
    with NetNS() as ns:
        a, b = spilling_ring(ns.veth_host), spilling_ring(ns.veth_host)
        ta, tb = _netlog.ConnTable(), _netlog.ConnTable()
        try:
            kept, dropped = (tcp_server(ns.peer_ip, 20000, prefix=ns.prefix(), conns=3) for _ in range(2))
            rule = parse_rules(f"dst_port == {dropped.info['port']}").statements
            fa, fb = ConnFilter(rule, ns.veth_host), ConnFilter(rule, ns.veth_host)
            for i in range(6):
                srv = (kept, dropped)[i % 2]
                with socket.create_connection((ns.peer_ip, srv.info["port"]), timeout=10) as c:
                    c.sendall(f"GET /filtered/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + b"y" * 2000)
                    c.shutdown(socket.SHUT_WR)
                    while c.recv(65536):
                        pass
                if i == 2:   # some connections judged in one call, the others in the next
                    ta.fold_ring(a, 64, True, 50, fa)
            kept.wait(10)
            dropped.wait(10)
            time.sleep(0.1)   # the last blocks retired (retire_ms 10) and spilled
            while True:
                taken, more = ta.fold_ring(a, 2, True, 0, fa)
                if not taken and not more:
                    break
            while True:
                pkts, payload, more = b.read(max_blocks=1)
                if len(pkts):
                    keep = fb.keep(pkts)
                    tb.add(pkts[keep], payload)
                if not len(pkts) and not more:
                    break
            now = time.time_ns()
            ga, gb = ta.collect(now, True), tb.collect(now, True)
        finally:
            a.close()
            b.close()

    def port(chunks, srv):
        return chunks[chunks["rport"] == srv.info["port"]]
    assert len(port(ga.chunks, kept)) == 3 and len(port(ga.chunks, dropped)) == 0
    for field in ("tx_packets", "rx_packets", "tx_bytes", "rx_bytes", "tx_retrans", "rx_retrans"):
        assert int(port(ga.chunks, kept)[field].sum()) == int(port(gb.chunks, kept)[field].sum())
    paths = sorted(bytes(x["path"][:x["path_len"]]) for x in ga.exchanges)
    assert paths == sorted(bytes(x["path"][:x["path_len"]]) for x in gb.exchanges)
    assert paths == [f"/filtered/{i}".encode() for i in (0, 2, 4)]
    assert fa.connections == fb.connections == 3
    assert fa.packets == fb.packets > 3 * 6


def udp_burst(addr, n, delay=0.0):
    time.sleep(delay)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(b"x" * 200, (addr, 9000 + i % 7))


def test_fold_ring_lingers_for_what_comes_and_keeps_to_its_budget(bpf_ok):
    """A call with linger_ms returns after about that long (nothing spilled);
    packets sent meanwhile are folded by the same call. Over the budget,
    more is True and the rest is left for the next call. (The host's end
    of a test veth: no other traffic there.)"""
    from support.netns import NetNS

    from dkebpf import _netlog
    with NetNS() as ns:
        ring = spilling_ring(ifname=ns.veth_host)
        table = _netlog.ConnTable()
        try:
            time.sleep(0.05)
            while table.fold_ring(ring, 64)[0]:   # what the ring already holds
                pass
            t0 = time.monotonic()
            # the kernel's own packets (IPv6 neighbour discovery) may still come: folded too
            assert not table.fold_ring(ring, 64, True, 150)[1]
            assert 0.12 < time.monotonic() - t0 < 1.0
            sender = threading.Thread(target=udp_burst, args=(ns.peer_ip, 50, 0.05))
            sender.start()
            taken, more = table.fold_ring(ring, 64, True, 600)
            sender.join()
            assert taken > 0 and not more and table.packets >= 50
            # a budget of one block with several waiting
            udp_burst(ns.peer_ip, 2000)
            time.sleep(0.1)
            taken, more = table.fold_ring(ring, 1, True, 0)
            assert taken == 1 and more
            assert ring.wait(0)   # fileno() stays readable for the rest
        finally:
            ring.close()


def test_fold_ring_needs_a_spilling_open_ring(bpf_ok):
    from dkebpf import _netlog, _packets
    from dkebpf.packetfilter import netlog_filter
    table = _netlog.ConnTable()
    with _packets.PacketRing(netlog_filter(), block_size=1 << 16, block_nr=2) as ring:
        with pytest.raises(RuntimeError, match="spilling"):
            table.fold_ring(ring, 1)
        ring.start_spill()
        with pytest.raises(ValueError, match="max_blocks"):
            table.fold_ring(ring, 0)
    with pytest.raises(RuntimeError, match="after close"):
        table.fold_ring(ring, 1)
    with pytest.raises(TypeError):
        table.fold_ring(object(), 1)

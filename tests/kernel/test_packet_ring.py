"""The packet socket on the real kernel: the port-53 filter, the
TPACKET_V3 ring walk and the decode, with DNS messages sent over loopback
(each must be seen exactly once although loopback hands packet sockets
two copies) and over a veth into a test namespace (seen on transmit)."""
import random
import socket
import struct
import time

import pytest

from support.netns import NetNS, sh

pytestmark = [pytest.mark.kernel, pytest.mark.requires("packet_socket")]


def query(qid, name=b"\x04ring\x04test\x00"):
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"


@pytest.fixture(params=[False, True], ids=["ring", "spill"])
def ring(bpf_ok, request):
    """The ring read by read() itself, or emptied by its spiller thread."""
    from dkebpf import _packets
    from dkebpf.packetfilter import port_filter
    with _packets.PacketRing(port_filter(53), retire_ms=10) as r:
        if request.param:
            r.start_spill()
        yield r


def read_all(ring, want, match, timeout=5):
    from dkebpf import _dns
    got = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ring.wait(50)
        pkts, payload, _more = ring.read()
        if len(pkts):
            msgs, _addrs, _c = _dns.parse_packets(pkts, payload)
            got += [m for m in msgs if match(m)]
        if len(got) >= want:
            time.sleep(0.2)   # a duplicate would arrive right behind
            pkts, payload, _more = ring.read()
            if len(pkts):
                got += [m for m in _dns.parse_packets(pkts, payload)[0] if match(m)]
            break
    return got


def test_loopback_udp_and_tcp_each_message_once(ring):
    addr = f"127.77.{random.randint(1, 254)}.{random.randint(1, 254)}"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, 53))
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((addr, 53))
    lst.listen()
    try:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for qid in range(1, 6):
            c.sendto(query(qid), (addr, 53))
        c.sendto(query(99), (addr, 54))            # another port: filtered out
        t = socket.create_connection((addr, 53))
        q1, q2 = query(201), query(202)
        t.sendall(struct.pack("!H", len(q1)) + q1 + struct.pack("!H", len(q2)) + q2)
        s, _ = lst.accept()
        got = read_all(ring, 7, lambda m: bytes(m["daddr"])[:4] == socket.inet_aton(addr))
        t.close()
        s.close()
        c.close()
    finally:
        udp.close()
        lst.close()
    assert sorted((int(m["proto"]), int(m["id"])) for m in got) == \
        [(6, 201), (6, 202)] + [(17, i) for i in range(1, 6)]
    assert {int(m["hatype"]) for m in got} == {772} and {int(m["dport"]) for m in got} == {53}
    assert all(m["ts_ns"] > 0 for m in got)


def test_veth_ipv6_seen_on_transmit(ring):
    with NetNS() as ns:
        c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        for qid in (7, 8, 9):
            c.sendto(query(qid), (ns.peer_ip6, 53))
        c.close()
        got = read_all(ring, 3, lambda m: bytes(m["daddr"]) == socket.inet_pton(socket.AF_INET6, ns.peer_ip6))
    assert sorted(int(m["id"]) for m in got) == [7, 8, 9]
    assert {(int(m["family"]), int(m["pkttype"])) for m in got} == {(6, 4)}   # PACKET_OUTGOING


def test_interface_down_error_taken_once_and_capture_resumes(bpf_ok):
    """The kernel sets ENETDOWN on a socket bound to an interface that goes
    down and keeps it readable (POLLERR) until the error is read; the
    socket stays bound and sees the interface's packets once it is up."""
    import errno
    import select

    from dkebpf import _packets
    from dkebpf.packetfilter import port_filter
    with NetNS() as ns, _packets.PacketRing(port_filter(53), retire_ms=10,
                                            ifindex=socket.if_nametoindex(ns.veth_host)) as ring:
        assert ring.take_error() == 0
        sh("ip", "link", "set", ns.veth_host, "down")
        sh("ip", "link", "set", ns.veth_host, "up")
        p = select.poll()
        p.register(ring.fileno(), select.POLLIN)
        assert p.poll(1000) == [(ring.fileno(), select.POLLERR)]
        assert ring.take_error() == errno.ENETDOWN
        assert ring.take_error() == 0 and p.poll(0) == []   # cleared: no longer readable
        assert ring.counters()["socket_errors"] == 1
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sendto(query(31), (ns.peer_ip, 53))   # the IPv4 address and route came back with the link
        c.close()
        got = read_all(ring, 1, lambda m: bytes(m["daddr"])[:4] == socket.inet_aton(ns.peer_ip))
    assert [int(m["id"]) for m in got] == [31]


def test_spilling_interface_down_error_taken_once_and_capture_resumes(bpf_ok):
    """The spiller thread reads the socket's error (else the socket stays
    readable and it spins) and hands it to take_error(), once."""
    import errno

    from dkebpf import _packets
    from dkebpf.packetfilter import port_filter
    with NetNS() as ns, _packets.PacketRing(port_filter(53), retire_ms=10,
                                            ifindex=socket.if_nametoindex(ns.veth_host)) as ring:
        ring.start_spill()
        sh("ip", "link", "set", ns.veth_host, "down")
        sh("ip", "link", "set", ns.veth_host, "up")
        assert ring.wait(1000)
        assert ring.take_error() == errno.ENETDOWN
        assert ring.take_error() == 0
        assert ring.counters()["socket_errors"] == 1
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sendto(query(32), (ns.peer_ip, 53))
        c.close()
        got = read_all(ring, 1, lambda m: bytes(m["daddr"])[:4] == socket.inet_aton(ns.peer_ip))
    assert [int(m["id"]) for m in got] == [32]


def test_spill_full_drops_whole_blocks_counted(bpf_ok):
    """A spill of one block that nobody reads: the spiller keeps handing the
    ring's blocks back to the kernel, the packets of those that did not fit
    counted in spill_drops; every packet is read or counted once. A port of
    its own: the drop counters count every packet the filter takes, so
    another process's DNS on this host must not reach this ring."""
    from dkebpf import _packets
    from dkebpf.packetfilter import port_filter
    addr = f"127.78.{random.randint(1, 254)}.{random.randint(1, 254)}"
    port = random.randint(20000, 60000)
    n = 400
    with _packets.PacketRing(port_filter(port), block_size=4096, block_nr=4, retire_ms=10,
                             ifindex=socket.if_nametoindex("lo")) as ring:
        ring.start_spill(spill_blocks=1)
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for qid in range(n):
            c.sendto(query(qid), (addr, port))
            if qid % 10 == 9:
                time.sleep(0.002)   # the ring (4 blocks) is not what overflows
        c.close()
        time.sleep(0.3)   # the last block retired (retire_ms) and spilled or dropped
        rc = ring.counters()
        assert rc["spill_drops"] > 0 and 0 < rc["spill_bytes_peak"] <= 4096
        got, _more = _count(ring, addr, port)
        rc = ring.counters()
    assert got > 0
    assert got + rc["spill_drops"] + rc["kernel_drops"] == n


def _spill_ring(port):
    """A spilling ring of 4 KiB blocks on loopback: 64 slots, the hot region
    (twice the ring) 8 slots."""
    from dkebpf import _packets
    from dkebpf.packetfilter import port_filter
    ring = _packets.PacketRing(port_filter(port), block_size=4096, block_nr=4, retire_ms=10,
                               ifindex=socket.if_nametoindex("lo"))
    ring.start_spill(spill_blocks=64)
    return ring


def _count(ring, addr, port):
    pkts, _payload, more = ring.read(max_blocks=64)
    import numpy as np
    daddr = np.frombuffer(pkts["daddr"].tobytes(), np.uint8).reshape(-1, 16)[:, :4]
    mine = (pkts["dport"] == port) & (daddr == np.frombuffer(socket.inet_aton(addr), np.uint8)).all(axis=1)
    return int(mine.sum()), more


def test_spill_light_traffic_reuses_the_lowest_slots(bpf_ok):
    """Steady light traffic through more blocks than the spill has slots:
    each block goes to the lowest free slot, so the spill touches a block
    or two, not all 64 (a slot per seq would touch every one)."""
    addr = f"127.79.{random.randint(1, 254)}.{random.randint(1, 254)}"
    port = random.randint(20000, 60000)
    sent = got = 0
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with _spill_ring(port) as ring:
        worst = 0
        end = time.monotonic() + 60
        while ring.counters()["blocks"] < 2 * 64 and time.monotonic() < end:
            for _ in range(5):
                c.sendto(query(sent), (addr, port))
                sent += 1
            time.sleep(0.015)   # the block retired (retire_ms) and spilled
            ring.wait(200)
            n, _more = _count(ring, addr, port)
            got += n
            worst = max(worst, ring.counters()["spill_touched_bytes"])
        time.sleep(0.05)
        ring.wait(200)
        got += _count(ring, addr, port)[0]
        rc = ring.counters()
    c.close()
    assert rc["blocks"] >= 2 * 64
    assert 0 < worst <= 2 * 4096
    assert rc["spill_drops"] == rc["kernel_drops"] == 0
    assert got == sent


def test_spill_backlog_released_once_drained(bpf_ok):
    """The reader held off while many blocks spill, then drained: the slots
    beyond the hot region go back to the kernel (spill_released_bytes) and
    the touched set shrinks to the hot region; every packet decoded."""
    addr = f"127.80.{random.randint(1, 254)}.{random.randint(1, 254)}"
    port = random.randint(20000, 60000)
    n = 1000
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with _spill_ring(port) as ring:
        for qid in range(n):
            c.sendto(query(qid), (addr, port))
            if qid % 10 == 9:
                time.sleep(0.002)   # the ring (4 blocks) is not what overflows
        time.sleep(0.3)   # the last block retired and spilled
        rc = ring.counters()
        assert rc["spill_touched_bytes"] > 8 * 4096 and rc["spill_released_bytes"] == 0
        got, more = 0, True
        while more:
            k, more = _count(ring, addr, port)
            got += k
        end = time.monotonic() + 5
        while ring.counters()["spill_released_bytes"] == 0 and time.monotonic() < end:
            time.sleep(0.05)   # the idle spiller looks every 100 ms
        rc = ring.counters()
        got += _count(ring, addr, port)[0]
    c.close()
    assert rc["spill_released_bytes"] > 0
    assert 0 < rc["spill_touched_bytes"] <= 8 * 4096
    assert rc["spill_drops"] == rc["kernel_drops"] == 0
    assert got == n


def test_received_only_and_transmitted_only_sockets_split_a_veths_traffic(bpf_ok):
    """dnsflow's split: an unbound socket with PACKET_IGNORE_OUTGOING gets
    what the host receives from the namespace, not what it sends there; a
    socket bound to the host's veth with the outgoing-only filter gets what
    the host sends, not what it receives. unread_since_ns() tells a packet
    still in an open block (a long retire timer here) and is never later
    than its capture time."""
    from dkebpf import _packets
    from dkebpf.packetfilter import port_filter
    with NetNS() as ns, \
            _packets.PacketRing(port_filter(53), retire_ms=10, ignore_outgoing=True) as rx, \
            _packets.PacketRing(port_filter(53, outgoing_only=True), block_size=16384, block_nr=4,
                                retire_ms=2000, ifindex=socket.if_nametoindex(ns.veth_host)) as tx:
        assert tx.unread_since_ns() == 0
        before = time.time_ns()
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sendto(query(41), (ns.peer_ip, 53))      # host -> namespace: sent on the veth
        c.close()
        ns.exec("python3", "-c", "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"s.sendto(bytes.fromhex(sys.argv[1]), ('{ns.host_ip}', 53))", query(42).hex())
        since = tx.unread_since_ns()
        assert 0 < since, "the query waits in the transmit ring's open block"
        peer, host = socket.inet_aton(ns.peer_ip), socket.inet_aton(ns.host_ip)
        got_tx = read_all(tx, 1, lambda m: bytes(m["daddr"])[:4] in (peer, host), timeout=5)
        got_rx = read_all(rx, 1, lambda m: bytes(m["daddr"])[:4] in (peer, host))
        assert tx.unread_since_ns() == 0
    assert [(int(m["id"]), int(m["pkttype"])) for m in got_tx] == [(41, 4)]   # PACKET_OUTGOING
    assert [(int(m["id"]), int(m["pkttype"])) for m in got_rx] == [(42, 0)]   # PACKET_HOST
    assert before - 1_000_000_000 < since <= int(got_tx[0]["ts_ns"])


def test_idle_ring_releases_its_spill_and_decode_buffers(bpf_ok):
    """No block for IDLE_RELEASE_MS (5 s): the spill's hot slots go back to
    the kernel too (touched 0); release_buffers() frees the decode buffers
    and the next read allocates them again: packets still decoded."""
    addr = f"127.81.{random.randint(1, 254)}.{random.randint(1, 254)}"
    port = random.randint(20000, 60000)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got = 0
    with _spill_ring(port) as ring:
        for qid in range(20):
            c.sendto(query(qid), (addr, port))
        time.sleep(0.1)   # retired (retire_ms 10) and spilled
        ring.wait(200)
        got += _count(ring, addr, port)[0]
        assert got == 20 and ring.counters()["spill_touched_bytes"] > 0
        end = time.monotonic() + 15
        while ring.counters()["spill_touched_bytes"] and time.monotonic() < end:
            time.sleep(0.2)
        rc = ring.counters()
        assert rc["spill_touched_bytes"] == 0 and rc["spill_released_bytes"] > 0
        ring.release_buffers()
        for qid in range(20, 30):
            c.sendto(query(qid), (addr, port))
        time.sleep(0.1)
        ring.wait(200)
        got += _count(ring, addr, port)[0]
        assert ring.counters()["spill_touched_bytes"] > 0   # touched again
    c.close()
    assert got == 30

"""netflow.bpf.o on the real kernel: load, attach, real traffic, and the
decoded map entries and closed-connection records checked exactly."""
import json
import os
import shutil
import socket
import subprocess

import numpy as np
import pytest

from support import traffic
from support.tcp_pair import TcpPair
from support.netns import NetNS

pytestmark = [pytest.mark.kernel,
              pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast", "cgroup2")]


@pytest.fixture
def netflow(bpf_ok):
    from dkebpf.bpf_objects import NETFLOW, BpfSkeleton

    with BpfSkeleton(NETFLOW).start(knobs={"self_tgid": os.getpid(), "ipv6_disabled": 0}) as bpf:
        yield bpf, bpf.rings.closed


def ip_bytes(text):
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return socket.inet_pton(socket.AF_INET, text) + b"\0" * 12


def closed_of(ring, pid):
    from dkebpf import _records
    ring.poll(200)
    ev = ring.take()
    return ev[ev["stats"]["pid"] == pid], _records


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_loopback_exact_bytes_and_close(netflow, host):
    bpf, ring = netflow
    from dkebpf import _records as R
    srv = traffic.tcp_server(host, 4321)
    try:
        pid, _, res = traffic.run_client("tcp-client", host, srv.info["port"], 12345)
        srv_res = srv.wait()
    finally:
        srv.stop()
    assert res[0]["received"] == 4321 and srv_res[0]["received"] == 12345
    ring.poll(200)
    everything = ring.take()  # both ends' records: taken once, split by process
    ev = everything[everything["stats"]["pid"] == pid]
    assert len(ev) == 1, ev
    s, k = ev[0]["stats"], ev[0]["key"]
    assert (int(s["bytes_sent"]), int(s["bytes_recv"])) == (12345, 4321)
    assert s["direction"] == R.DIR_OUTGOING
    assert s["flags"] & R.F_ESTABLISHED and s["flags"] & R.F_CLOSED
    assert s["lport"] == res[0]["lport"] and k["rport"] == srv.info["port"]
    assert bytes(k["raddr"]) == ip_bytes(host) and bytes(s["laddr"]) == ip_bytes(host)
    assert s["family"] == (6 if ":" in host else 4) and s["proto"] == 6
    assert s["comm"].startswith(b"python")
    assert s["rtt_us"] > 0
    # the server's side of the same connection, seen from the server process:
    # the mirror image of the client's
    sv = everything[everything["stats"]["pid"] == srv.pid]
    assert len(sv) == 1, sv
    ss, sk = sv[0]["stats"], sv[0]["key"]
    assert (int(ss["bytes_sent"]), int(ss["bytes_recv"])) == (4321, 12345)
    assert ss["direction"] == R.DIR_INCOMING
    assert ss["flags"] & R.F_CLOSED
    assert ss["lport"] == srv.info["port"] and sk["rport"] == res[0]["lport"]
    assert bytes(sk["raddr"]) == ip_bytes(host) and bytes(ss["laddr"]) == ip_bytes(host)
    assert ss["family"] == s["family"] and ss["proto"] == 6


def test_tcp_server_side_is_incoming(netflow):
    bpf, ring = netflow
    srv = traffic.tcp_server("127.0.0.1", 999)
    try:
        cpid, _, res = traffic.run_client("tcp-client", "127.0.0.1", srv.info["port"], 777)
        srv.wait()
    finally:
        srv.stop()
    ring.poll(200)
    ev = ring.take()
    from dkebpf import _records as R
    server = ev[ev["stats"]["pid"] == srv.pid]
    assert len(server) == 1
    s = server[0]["stats"]
    assert s["direction"] == R.DIR_INCOMING
    assert s["lport"] == srv.info["port"] and server[0]["key"]["rport"] == res[0]["lport"]
    assert (int(s["bytes_recv"]), int(s["bytes_sent"])) == (777, 999)


def test_udp_unconnected_peer_from_the_cgroup_hooks(netflow):
    bpf, ring = netflow
    from dkebpf import _records as R
    with NetNS() as ns:
        srv = traffic.udp_server(ns.peer_ip, 50, prefix=ns.prefix(), datagrams=3)
        try:
            pid, _, res = traffic.run_client("udp-client", ns.peer_ip, srv.info["port"], 200, 3)
            srv.wait()
        finally:
            srv.stop()
        keys, vals = bpf.maps.conns.dump(R.KEY_DTYPE)
        stats = vals.view(R.STATS_DTYPE)
        mine = stats["pid"] == pid
        assert mine.sum() == 1, stats[mine]
        s, k = stats[mine][0], keys[mine][0]
        assert (int(s["bytes_sent"]), int(s["bytes_recv"])) == (600, 150)
        assert bytes(k["raddr"]) == ip_bytes(ns.peer_ip) and k["rport"] == srv.info["port"]
        assert s["proto"] == 17 and s["direction"] == R.DIR_OUTGOING
        # the server bound its port explicitly: its flow is incoming
        srv_rows = stats["pid"] == srv.pid
        assert srv_rows.sum() == 1
        assert stats[srv_rows][0]["direction"] == R.DIR_INCOMING
        assert (int(stats[srv_rows][0]["bytes_recv"]), int(stats[srv_rows][0]["bytes_sent"])) == (600, 150)


def udp_flows(bpf, pid):
    """{(family, remote address, remote port): (bytes_recv, bytes_sent,
    direction)} of the map entries of process pid."""
    from dkebpf import _records as R
    keys, vals = bpf.maps.conns.dump(R.KEY_DTYPE)
    stats = vals.view(R.STATS_DTYPE)
    mine = stats["pid"] == pid
    return {(int(s["family"]), bytes(k["raddr"]), int(k["rport"])):
            (int(s["bytes_recv"]), int(s["bytes_sent"]), int(s["direction"]))
            for k, s in zip(keys[mine], stats[mine])}


def drop_count(bpf, name):
    return bpf.counters()[f"kernel_drop_{name}"]


def prog_id(fd):
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("prog_id:"))


def cgroup_programs(path):
    """{program id: (attach type, attach flags)} on the cgroup at path (bpftool)."""
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", path], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"]: (p["attach_type"], p["attach_flags"]) for p in json.loads(out.strip() or "[]")}


def test_peer_hooks_attach_to_the_root_cgroup_in_multi_mode_and_leave_on_close(bpf_ok):
    from dkebpf import kernel
    from dkebpf.bpf_objects import NETFLOW, BpfSkeleton

    root = kernel.cgroup2_root()
    with open("/proc/self/mountinfo") as f:
        assert any(f" {root} " in line and " - cgroup2 " in line for line in f)
    bpf = BpfSkeleton(NETFLOW).start(knobs={"self_tgid": os.getpid()})
    try:
        ids = {prog_id(bpf.obj.program(name).fd): name for name in NETFLOW.cgroup}
        on_root = cgroup_programs(root)
        assert {on_root.get(i) for i in ids} == {
            ("cgroup_udp4_sendmsg", "multi"), ("cgroup_udp6_sendmsg", "multi"),
            ("cgroup_udp4_recvmsg", "multi"), ("cgroup_udp6_recvmsg", "multi")}
    finally:
        bpf.close()
    assert not set(ids) & set(cgroup_programs(root))


def test_threads_sharing_one_socket_each_get_their_datagrams_peer(netflow):
    """Four threads of a server on one unconnected socket, recvmsg and
    sendmsg (msghdr calls), two clients at once: each client's datagrams
    go to its own flow, exactly."""
    bpf, ring = netflow
    srv = traffic.Proc(["udp-threads-server", "127.0.0.1", 30, 40, 4])
    try:
        clients = [traffic.Proc(["udp-client", "127.0.0.1", srv.info["port"], 100, 20]) for _ in range(2)]
        results = [c.wait()[0] for c in clients]
        assert srv.wait()[0]["received"] == 4000
    finally:
        srv.stop()
    lo = ip_bytes("127.0.0.1")
    assert udp_flows(bpf, srv.pid) == {(4, lo, r["lport"]): (2000, 600, 2) for r in results}
    for c, r in zip(clients, results):
        assert udp_flows(bpf, c.pid) == {(4, lo, srv.info["port"]): (600, 2000, 1)}


@pytest.fixture(scope="module")
def udp_mmsg(tmp_path_factory):
    """tests/support/udp_mmsg.c, built with the system's C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler (apt-get install gcc)"
    exe = str(tmp_path_factory.mktemp("udp_mmsg") / "udp_mmsg")
    src = os.path.join(os.path.dirname(traffic.__file__), "udp_mmsg.c")
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", exe, src], check=True)
    return (exe,)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_sendmmsg_and_recvmmsg_datagrams_each_find_their_peer(netflow, udp_mmsg, host):
    """Several datagrams per call (sendmmsg/recvmmsg), both ends, from a C
    program: the cgroup hooks run once per datagram, so every datagram has
    its peer, which no syscall's registers could tell."""
    bpf, ring = netflow
    srv = traffic.Proc(["server", host, 7, 12], program=udp_mmsg)
    try:
        clients = [traffic.Proc(["client", host, srv.info["port"], 50, n], program=udp_mmsg) for n in (8, 4)]
        results = [c.wait()[0] for c in clients]
        assert srv.wait()[0]["received"] == 600
    finally:
        srv.stop()
    fam, addr = (6 if ":" in host else 4), ip_bytes(host)
    assert [(r["sent"], r["received"]) for r in results] == [(400, 56), (200, 28)]
    assert udp_flows(bpf, srv.pid) == {(fam, addr, results[0]["lport"]): (400, 56, 2),
                                       (fam, addr, results[1]["lport"]): (200, 28, 2)}
    for c, r in zip(clients, results):
        assert udp_flows(bpf, c.pid) == {(fam, addr, srv.info["port"]): (r["received"], r["sent"], 1)}


def test_datagrams_received_without_source_address_are_counted_not_misread(netflow):
    """recv() on an unconnected socket asks for no source address: no hook
    runs, the peer is unknown. Those datagrams make no flow (never one with
    a guessed peer) and are counted in udp_peer_unknown."""
    bpf, ring = netflow
    before = drop_count(bpf, "udp_peer_unknown")
    srv = traffic.Proc(["udp-recv-noaddr", "127.0.0.1", 3])
    try:
        senders = [traffic.run_client("udp-fanout", "127.0.0.1", srv.info["port"], 1, 25) for _ in range(3)]
        assert srv.wait()[0]["received"] == 75
    finally:
        srv.stop()
    assert udp_flows(bpf, srv.pid) == {}
    for pid, _, _ in senders:  # the senders' side has its peer (sendto)
        assert udp_flows(bpf, pid) == {(4, ip_bytes("127.0.0.1"), srv.info["port"]): (0, 25, 1)}
    # other processes' datagrams may count too (the counter is system-wide)
    assert drop_count(bpf, "udp_peer_unknown") - before >= 3


def test_dual_stack_servers_report_each_peer_in_its_family(netflow):
    """A UDP server on `::` without IPV6_V6ONLY (CoreDNS, Go, Java, Node)
    and a TCP one: an IPv4 client is an IPv4 flow with its own address, an
    IPv6 client an IPv6 flow."""
    bpf, ring = netflow
    from dkebpf import _records as R
    usrv = traffic.udp_server("::", 30, datagrams=4)
    tsrv = traffic.tcp_server("::", 40, conns=2)
    try:
        clients = {}
        for host in ("127.0.0.1", "::1"):
            pid, _, res = traffic.run_client("udp-client", host, usrv.info["port"], 100, 2)
            clients[host] = res[0]["lport"]
            traffic.run_client("tcp-client", host, tsrv.info["port"], 50)
        usrv.wait()
        tsrv.wait()
    finally:
        usrv.stop()
        tsrv.stop()
    keys, vals = bpf.maps.conns.dump(R.KEY_DTYPE)
    stats = vals.view(R.STATS_DTYPE)
    mine = stats["pid"] == usrv.pid
    got = sorted((int(s["family"]), bytes(k["raddr"]), int(k["rport"]), int(s["bytes_recv"]), int(s["bytes_sent"]))
                 for k, s in zip(keys[mine], stats[mine]))
    assert got == sorted([(4, ip_bytes("127.0.0.1"), clients["127.0.0.1"], 200, 60),
                          (6, ip_bytes("::1"), clients["::1"], 200, 60)])
    assert all(s["direction"] == R.DIR_INCOMING for s in stats[mine])
    ring.poll(200)
    ev = ring.take()
    tcp = ev[ev["stats"]["pid"] == tsrv.pid]
    assert sorted((int(e["stats"]["family"]), bytes(e["key"]["raddr"]), bytes(e["stats"]["laddr"])) for e in tcp) == \
        sorted([(4, ip_bytes("127.0.0.1"), ip_bytes("127.0.0.1")), (6, ip_bytes("::1"), ip_bytes("::1"))])


def test_udp_connected(netflow):
    bpf, ring = netflow
    from dkebpf import _records as R
    srv = traffic.udp_server("127.0.0.1", 10, datagrams=4)
    try:
        pid, _, res = traffic.run_client("udp-client", "127.0.0.1", srv.info["port"], 64, 4, 1)
        srv.wait()
    finally:
        srv.stop()
    keys, vals = bpf.maps.conns.dump(R.KEY_DTYPE)
    stats = vals.view(R.STATS_DTYPE)
    s = stats[stats["pid"] == pid]
    assert len(s) == 1 and (int(s[0]["bytes_sent"]), int(s[0]["bytes_recv"])) == (256, 40)


def test_retransmits_counted_under_loss(netflow):
    bpf, ring = netflow
    with NetNS() as ns:
        ns.drop_randomly(0.3)
        srv = traffic.tcp_server(ns.peer_ip, 1000, prefix=ns.prefix())
        try:
            pid, _, res = traffic.run_client("tcp-client", ns.peer_ip, srv.info["port"], 300000)
            srv.wait(60)
        finally:
            srv.stop()
    ev, R = closed_of(ring, pid)
    assert len(ev) == 1
    assert int(ev[0]["stats"]["bytes_sent"]) == 300000
    assert ev[0]["stats"]["retransmits"] > 0


def _snapshot(bpf, ring):
    """(map entries of both flow maps, closed records) as they are now."""
    from dkebpf.plugins.netflow import flow_table
    ring.poll(200)
    return flow_table(bpf), ring.take()


def _between(snap, lport, rport):
    """Map entries and closed records of the socket lport -> rport."""
    (keys, stats), ev = snap
    return (stats[(stats["lport"] == lport) & (keys["rport"] == rport)],
            ev[(ev["stats"]["lport"] == lport) & (ev["key"]["rport"] == rport)])


def test_own_connections_are_not_flows(netflow):
    """The collector's own sockets (self_tgid, here this test process): its
    outgoing connections (posts to DataKit) and the ones its listener
    accepts (debug server) leave nothing, though their handshakes and
    closes run in softirq; the peers in other processes are reported."""
    import threading
    bpf, ring = netflow
    # outgoing: this process connects to a server in another process
    srv = traffic.tcp_server("127.0.0.1", 300)
    try:
        c = socket.create_connection(("127.0.0.1", srv.info["port"]))
        my_port = c.getsockname()[1]
        c.sendall(b"p" * 500)
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
        c.close()
        srv.wait()
    finally:
        srv.stop()
    snap = _snapshot(bpf, ring)
    mine, mine_closed = _between(snap, my_port, srv.info["port"])
    assert len(mine) == 0 and len(mine_closed) == 0, (mine, mine_closed)
    _, theirs = _between(snap, srv.info["port"], my_port)
    assert len(theirs) == 1 and theirs[0]["stats"]["pid"] == srv.pid
    assert int(theirs[0]["stats"]["bytes_recv"]) == 500

    # incoming: a client in another process connects to this process's listener
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    port = lst.getsockname()[1]
    accepted = []

    def serve():
        a, _ = lst.accept()
        while a.recv(65536):
            pass
        a.sendall(b"q" * 200)
        a.close()
        accepted.append(1)

    t = threading.Thread(target=serve)
    t.start()
    cpid, _, res = traffic.run_client("tcp-client", "127.0.0.1", port, 700)
    t.join(10)
    lst.close()
    assert accepted and res[0]["received"] == 200
    snap = _snapshot(bpf, ring)
    mine, mine_closed = _between(snap, port, res[0]["lport"])
    assert len(mine) == 0 and len(mine_closed) == 0, (mine, mine_closed)
    _, theirs = _between(snap, res[0]["lport"], port)
    assert len(theirs) == 1 and theirs[0]["stats"]["pid"] == cpid


def test_knob_and_map_errors_are_clear(bpf_ok):
    """Misuse is a bug (LookupError, RuntimeError); the kernel's refusal is
    a KernelError, an OSError keeping the errno."""
    import errno

    from dkebpf import _libbpf
    from dkebpf.bpf_objects import bpf_object_path
    from dkebpf.errors import KernelError

    with _libbpf.BpfObject(bpf_object_path("netflow")) as obj:
        with pytest.raises(LookupError, match="no knob 'nope'"):
            obj.set_knobs(nope=1)
        with pytest.raises(LookupError, match="no map 'nope'"):
            obj.map("nope")
        with pytest.raises(RuntimeError, match="not loaded"):
            obj.program("on_send").attach()
        obj.load()
        with pytest.raises(RuntimeError, match="before load"):
            obj.set_knobs(self_tgid=1)
        bound = obj.map("bound_ports")
        key = np.zeros(1, dtype=[("port", "<u2"), ("proto", "u1"), ("pad", "u1")])
        key["port"], key["proto"] = 4242, 6
        bound.update(key.tobytes(), b"\x01")
        assert bound.lookup(key.tobytes()) == b"\x01"
        assert bound.delete(key.tobytes()) is True
        assert bound.lookup(key.tobytes()) is None
        assert bound.delete(key.tobytes()) is False
        # a full map: the kernel says E2BIG, kept as the OSError's errno
        with pytest.raises(KernelError, match="update map bound_ports") as full:
            for port in range(bound.max_entries + 1):
                key["port"] = port
                bound.update(key.tobytes(), b"\x01", _libbpf.BPF_NOEXIST)
        assert isinstance(full.value, OSError) and full.value.errno == errno.E2BIG
    with pytest.raises(RuntimeError, match="closed"):
        obj.map("bound_ports")
    with pytest.raises(KernelError, match="No such file") as missing:
        _libbpf.BpfObject("/nonexistent/x.bpf.o")
    assert missing.value.errno == errno.ENOENT


def tcp_entries(bpf, pid):
    """{local port: (remote port, bytes_sent, bytes_recv, flags, direction)}
    of pid's entries in tcp_flows, read as flow_table gives them."""
    from dkebpf.plugins.netflow import flow_table
    keys, stats = flow_table(bpf)
    mine = (stats["pid"] == pid) & (stats["proto"] == 6)
    return {int(s["lport"]): (int(k["rport"]), int(s["bytes_sent"]), int(s["bytes_recv"]),
                              int(s["flags"]), int(s["direction"]))
            for k, s in zip(keys[mine], stats[mine])}


def closed_by_port(ring, pid):
    ring.poll(200)
    ev = ring.take()
    ev = ev[ev["stats"]["pid"] == pid]
    return {int(e["stats"]["lport"]): (int(e["key"]["rport"]), int(e["stats"]["bytes_sent"]),
                                       int(e["stats"]["bytes_recv"]), int(e["stats"]["flags"]))
            for e in ev}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_live_tcp_flows_are_one_entry_per_socket_with_exact_counts(netflow, host):
    """While both ends are open, tcp_flows holds one entry per socket,
    keyed by its cookie, with the peer written at the handshake and the
    bytes that moved, exactly; closing moves each to the ring once."""
    from dkebpf import _records as R
    bpf, ring = netflow
    pair = TcpPair(host)
    try:
        for _ in range(3):
            pair.do("send 12345")
            pair.do("reply 4321")
        i = pair.info
        _, tcp = bpf.maps.tcp_flows.dump(np.uint64, R.EVENT_DTYPE)
        cookies = tcp["key"]["sk"][tcp["stats"]["pid"] == pair.pid]
        assert len(cookies) == 2 and len(set(cookies.tolist())) == 2
        live = tcp_entries(bpf, pair.pid)
        est = R.F_ESTABLISHED
        assert live == {i["lport"]: (i["rport"], 3 * 12345, 3 * 4321, est, R.DIR_OUTGOING),
                        i["sport"]: (i["lport"], 3 * 4321, 3 * 12345, est, R.DIR_INCOMING)}
        pair.do("send 100")
        assert tcp_entries(bpf, pair.pid)[i["lport"]][1] == 3 * 12345 + 100
    finally:
        pair.close()
    closed = R.F_ESTABLISHED | R.F_CLOSED
    assert closed_by_port(ring, pair.pid) == {i["lport"]: (i["rport"], 3 * 12345 + 100, 3 * 4321, closed),
                                              i["sport"]: (i["lport"], 3 * 4321, 3 * 12345 + 100, closed)}
    assert tcp_entries(bpf, pair.pid) == {}


def test_connection_open_before_load_counts_from_its_first_call(bpf_ok):
    """A connection that was open before the programs loaded: its first
    socket call makes its entry (peer and local end read then), which
    counts what moved from then on, exactly, and its close is reported."""
    from dkebpf import _records as R
    from dkebpf.bpf_objects import NETFLOW, BpfSkeleton
    pair = TcpPair("127.0.0.1")
    try:
        pair.do("send 5000")
        pair.do("reply 700")  # before load: not counted
        i = pair.info
        with BpfSkeleton(NETFLOW).start(knobs={"self_tgid": os.getpid()}) as bpf:
            assert tcp_entries(bpf, pair.pid) == {}
            pair.do("send 333")
            pair.do("reply 4444")
            live = tcp_entries(bpf, pair.pid)
            # the handshake was not seen: not established while watched
            assert {p: v[:4] for p, v in live.items()} == {i["lport"]: (i["rport"], 333, 4444, 0),
                                                           i["sport"]: (i["lport"], 4444, 333, 0)}
            assert live[i["lport"]][4] == R.DIR_OUTGOING
            pair.close()
            closed = closed_by_port(bpf.rings.closed, pair.pid)
            assert closed == {i["lport"]: (i["rport"], 333, 4444, R.F_CLOSED),
                              i["sport"]: (i["lport"], 4444, 333, R.F_CLOSED)}
    finally:
        pair.close()


def test_reconnect_ends_the_flow_and_starts_a_new_one(netflow):
    """A client socket that disconnects (connect(AF_UNSPEC)) and connects
    to another peer: the first connection is closed on the ring with its
    own totals at the second connect, the second is a new entry under the
    same cookie with the new peer and only its own bytes."""
    from dkebpf import _records as R
    bpf, ring = netflow
    pair = TcpPair("127.0.0.1")
    try:
        pair.do("send 1111")
        pair.do("reply 222")
        first = dict(pair.info)
        _, tcp = bpf.maps.tcp_flows.dump(np.uint64, R.EVENT_DTYPE)
        row = tcp[(tcp["stats"]["pid"] == pair.pid) & (tcp["stats"]["lport"] == first["lport"])]
        cookie, ts_first = int(row["key"]["sk"][0]), int(row["stats"]["ts_first"][0])
        second = pair.do("reconnect")
        assert second["rport"] != first["rport"]
        pair.do("send 30000")
        pair.do("reply 40")
        est, closed = R.F_ESTABLISHED, R.F_ESTABLISHED | R.F_CLOSED
        # the first flow, closed at the reconnect; the server's end of it
        # closed when it took the reset
        assert closed_by_port(ring, pair.pid) == {first["lport"]: (first["rport"], 1111, 222, closed),
                                                  first["sport"]: (first["lport"], 222, 1111, closed)}
        assert tcp_entries(bpf, pair.pid) == {
            second["lport"]: (second["rport"], 30000, 40, est, R.DIR_OUTGOING),
            second["sport"]: (second["lport"], 40, 30000, est, R.DIR_INCOMING)}
        _, tcp = bpf.maps.tcp_flows.dump(np.uint64, R.EVENT_DTYPE)
        row = tcp[(tcp["stats"]["pid"] == pair.pid) & (tcp["stats"]["lport"] == second["lport"])]
        assert int(row["key"]["sk"][0]) == cookie and int(row["stats"]["ts_first"][0]) > ts_first
    finally:
        pair.close()
    got = closed_by_port(ring, pair.pid)
    assert got == {second["lport"]: (second["rport"], 30000, 40, R.F_ESTABLISHED | R.F_CLOSED),
                   second["sport"]: (second["lport"], 40, 30000, R.F_ESTABLISHED | R.F_CLOSED)}

"""netlog_blacklist's classic BPF program on the real kernel.

1. Property test: generated header-field rules and frames (TCP/UDP, IPv4
   with options, IPv6, VXLAN over either, up to two VLAN tags) sent on a veth pair inside a
   namespace the test creates; the program attached to one packet socket
   per end (the sending end sees the frames as outgoing, the other as
   received) keeps exactly what the pure-Python reference says, and the
   per-connection Cython evaluator gives the reference's verdicts on the
   same connections.
2. Real TCP connections into a test namespace, and over a VXLAN between
   two test namespaces: the filtered TPACKET_V3 ring has none of the
   matching connection's packets and, packet for packet, the same others
   as an unfiltered ring beside it."""
import ctypes
import os
import socket
import struct
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.netlog_filter_ref import KEEP, REJECT, decode_frame, first_match
from support.netlog_filter_gen import conn_record, connection, frame_for, rules_text
from support.packets import ethernet, ip_packet, vxlan
from support.netns import NetNS, call_in_netns, sh

pytestmark = [pytest.mark.kernel, pytest.mark.requires("packet_socket")]

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
MARK = b"NLT1"


def attach(sock, program):
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def packet_socket(ifname, program=None):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # receives nothing before bind
    if program is not None:
        attach(s, program)
    s.bind((ifname, ETH_P_ALL))
    s.settimeout(2)
    return s


class VethLab:
    """A namespace holding a veth pair eth0 <-> veth1 and nothing else:
    frames sent on eth0 arrive on veth1; no other host sees them."""

    def __init__(self):
        self.ns = f"dkt-nl{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", self.ns)
        run = ["ip", "netns", "exec", self.ns]
        sh(*run, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "veth1")
        for dev in ("eth0", "veth1"):
            sh(*run, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh(*run, "ip", "link", "set", dev, "up")
        # ip netns exec mounts the namespace's own /sys
        self.mac = {dev: bytes.fromhex(sh(*run, "cat", f"/sys/class/net/{dev}/address")
                                       .stdout.strip().replace(":", ""))
                    for dev in ("eth0", "veth1")}
        self.sender = call_in_netns(self.ns, packet_socket, "eth0")
        self.socks = {dev: call_in_netns(self.ns, packet_socket, dev) for dev in ("eth0", "veth1")}

    def close(self):
        for s in (self.sender, *self.socks.values()):
            s.close()
        sh("ip", "netns", "del", self.ns, check=False)


@pytest.fixture(scope="module")
def lab():
    lab = VethLab()
    yield lab
    lab.close()


def sentinel(lab, nonce):
    """A non-first IPv4 fragment: every netlog program keeps it (user space
    counts fragments), so it marks the end of a batch on each socket."""
    ip = ip_packet(4, 17, bytes(4), bytes(4), 0, 0, b"", frag=1)[:20] + MARK + nonce + b"END!"
    ip = ip[:2] + struct.pack("!H", len(ip)) + ip[4:]
    return ethernet(0x0800, ip, dst=lab.mac["veth1"], src=lab.mac["eth0"])


def exchange(lab, frames):
    """Send the frames then the sentinel on eth0; per device the indexes
    of the frames its socket received."""
    nonce = os.urandom(4)
    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})   # one CPU: veth hands frames over in order
    try:
        for i, frame in enumerate(frames):
            lab.sender.send(frame.replace(MARK + b"\0" * 8, MARK + nonce + struct.pack("!I", i)))
        lab.sender.send(sentinel(lab, nonce))
    finally:
        os.sched_setaffinity(0, saved)
    got = {}
    for dev, s in lab.socks.items():
        seen = set()
        while True:
            data = s.recv(65536)
            at = data.find(MARK + nonce)
            if at < 0:
                continue
            tail = data[at + 8:at + 12]
            if tail == b"END!":
                break
            seen.add(struct.unpack("!I", tail)[0])
        got[dev] = seen
    return got


def expected(statements, frames, dev):
    """Indexes of the frames the reference keeps on dev; on the way, the
    per-connection Cython evaluator must reach the reference's verdicts."""
    from dkebpf import _netlog_filter as nf
    keep, conns, verdicts = set(), [], []
    for i, frame in enumerate(frames):
        conn = decode_frame(frame, outgoing=dev == "eth0")
        if conn == REJECT:
            continue
        if conn == KEEP:
            keep.add(i)
            continue
        conn["nic_name"] = dev.encode()
        conns.append(conn)
        verdicts.append(first_match(statements, conn))
        if verdicts[-1] < 0:
            keep.add(i)
    if conns:
        arr, names = conn_record(conns, nf)
        assert nf.ConnFilter(statements).verdicts(arr, names).tolist() == verdicts
    return keep


vlan_tags = st.lists(st.tuples(st.sampled_from((0x8100, 0x88A8)), st.integers(1, 4094)), max_size=2)


@st.composite
def frames(draw):
    out = []
    for _ in range(draw(st.integers(1, 10))):
        conn = draw(connection(names=False))
        kind = draw(st.sampled_from(("plain", "plain", "options", "vxlan4", "vxlan6")))
        payload = MARK + b"\0" * 8
        frame = frame_for(conn, True, payload, b"\x02" * 6, b"\x04" * 6,
                          vxlan=(4 if kind == "vxlan4" else 6, draw(st.sampled_from((0, 42, 16777215))))
                          if kind.startswith("vxlan") else None,
                          ip_options=b"\x01" * 4 * draw(st.integers(1, 10)) if kind == "options" else b"",
                          tags=draw(vlan_tags), inner_tags=draw(vlan_tags))
        out.append(frame)
    return out


def special_frames(lab):
    """Frames the program decides before any statement: an ICMP echo and
    an ARP request (not captured), an IPv6 hop-by-hop header (kept for user
    space), VXLAN carrying ARP (not captured), UDP to 4789 without the
    VXLAN I flag (plain UDP)."""
    mac_d, mac_s = lab.mac["veth1"], lab.mac["eth0"]
    a, b = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    payload = MARK + b"\0" * 8
    icmp = ip_packet(4, 17, a, b, 0, 0, payload)
    icmp = icmp[:9] + b"\x01" + icmp[10:]
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac_s, a, b"\0" * 6, b) + payload
    v6 = ip_packet(6, 17, socket.inet_pton(socket.AF_INET6, "fd00::1"),
                   socket.inet_pton(socket.AF_INET6, "fd00::2"), 1, 2, payload)
    hbh = v6[:6] + b"\x00" + v6[7:40] + b"\x11\x00\x01\x04\x00\x00\x00\x00" + v6[40:]
    hbh = hbh[:4] + struct.pack("!H", len(hbh) - 40) + hbh[6:]
    vx_arp = ip_packet(4, 17, a, b, 40000, 4789, vxlan(7, ethernet(0x0806, arp)))
    not_vx = ip_packet(4, 17, a, b, 40000, 4789, b"\0" * 8 + payload)
    return [ethernet(et, body, dst=mac_d, src=mac_s)
            for et, body in ((0x0800, icmp), (0x0806, arp), (0x86DD, hbh), (0x0800, vx_arp), (0x0800, not_vx))]


def check(lab, text, batch):
    from dkebpf.netlog.filter import parse_rules
    from dkebpf.netlog.filter_cbpf import socket_filter
    rules = parse_rules(text)
    placed = {}
    for dev, s in lab.socks.items():
        placed[dev] = socket_filter(rules, dev)
        attach(s, placed[dev].program)
    got = exchange(lab, batch)
    for dev in lab.socks:
        want = expected(placed[dev].in_kernel, batch, dev)
        assert got[dev] == want, (dev, text, placed[dev].length)
    return placed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rules_text(header_only=True), frames())
def test_program_keeps_what_the_reference_keeps(lab, text, batch):
    placed = check(lab, text, batch)
    # header-only rules run entirely in the kernel (none is too long here)
    assert all(not p.per_connection for p in placed.values())


def test_local_is_the_source_of_sent_packets_and_the_destination_of_received(lab):
    conn = {"family": 6, "proto": 6, "laddr": socket.inet_pton(socket.AF_INET6, "fd00::1"),
            "raddr": socket.inet_pton(socket.AF_INET6, "fd00::2"), "lport": 1000, "rport": 80, "vni": 0}
    plain = frame_for(conn, True, MARK + b"\0" * 8, lab.mac["veth1"], lab.mac["eth0"])
    vx = frame_for(conn, True, MARK + b"\0" * 8, lab.mac["veth1"], lab.mac["eth0"], vxlan=(4, 77))
    batch = [plain, vx]
    check(lab, 'dst_port == 80 && ip6_saddr == "fd00::1"', batch)
    assert exchange(lab, batch) == {"eth0": set(), "veth1": {0, 1}}
    check(lab, 'src_port == 80 && ip6_daddr == "fd00::1"', batch)
    assert exchange(lab, batch) == {"eth0": {0, 1}, "veth1": set()}
    check(lab, "vni == 77", batch)
    assert exchange(lab, batch) == {"eth0": {0}, "veth1": {0}}
    check(lab, 'nic_name == "veth1" && udp == false', batch)
    assert exchange(lab, batch) == {"eth0": {0, 1}, "veth1": set()}


def test_decisions_before_the_statements(lab):
    batch = special_frames(lab)
    check(lab, "false", batch)
    got = exchange(lab, batch)
    assert got == {"eth0": {2, 4}, "veth1": {2, 4}}
    check(lab, "udp", batch)   # the hop-by-hop packet is kept: user space decides it


def test_long_rules_relay_far_jumps_and_stop_at_the_limit(lab):
    conn = {"family": 4, "proto": 6, "laddr": socket.inet_aton("10.0.0.1"),
            "raddr": socket.inet_aton("10.0.0.2"), "lport": 1000, "rport": 2000, "vni": 0}
    batch = [frame_for(dict(conn, rport=p), True, MARK + b"\0" * 8, lab.mac["veth1"], lab.mac["eth0"])
             for p in (1, 600, 1999, 2000, 2500)]
    text = "\n".join(f"dst_port == {p} && src_port == 1000" for p in range(3, 2600, 2))
    placed = check(lab, text, batch)
    p = placed["eth0"]
    assert 600 < len(p.in_kernel) < 1299 and p.per_connection and p.length <= 4096
    assert p.per_connection[0].index == len(p.in_kernel)


# ---- real connections through the production ring ----

def serve(listener, stop):
    while not stop.is_set():
        try:
            c, _ = listener.accept()
        except OSError:
            return
        with c:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)


def test_tcp_connections_in_a_namespace():
    from dkebpf import _packets
    from dkebpf.netlog.filter import parse_rules
    from dkebpf.netlog.filter_cbpf import socket_filter
    with NetNS() as ns:
        ports = (18080, 18081)
        rule = (f'src_port == {ports[0]} && ip_daddr == "{ns.host_ip}"\n'
                f'ipnet_contains("{ns.host_ip6}/128", ip6_daddr)\n'
                f'nic_name == "{ns.veth_peer}" && dst_port == 9')

        def open_in_ns():
            listeners = []
            for fam, addr in ((socket.AF_INET, ns.peer_ip), (socket.AF_INET6, ns.peer_ip6)):
                for port in ports:
                    s = socket.socket(fam, socket.SOCK_STREAM)
                    s.bind((addr, port))
                    s.listen()
                    listeners.append(s)
            placed = socket_filter(parse_rules(rule), ns.veth_peer)
            assert len(placed.in_kernel) == 3
            return (listeners, _packets.PacketRing(placed.program, retire_ms=10),
                    _packets.PacketRing(socket_filter(None).program, retire_ms=10))

        listeners, filtered, unfiltered = call_in_netns(ns.name, open_in_ns)
        stop = threading.Event()
        threads = [threading.Thread(target=serve, args=(s, stop), daemon=True) for s in listeners]
        for t in threads:
            t.start()
        try:
            for fam, addr in ((socket.AF_INET, ns.peer_ip), (socket.AF_INET6, ns.peer_ip6)):
                for port in ports:
                    with socket.create_connection((addr, port), timeout=5) as c:
                        for n in (1, 100, 3000, 70000):
                            c.sendall(b"x" * n)
                            got = 0
                            while got < n:
                                got += len(c.recv(65536))
            all_rows = drain_rows(unfiltered)
            kept = drain_rows(filtered, 0.3)
        finally:
            stop.set()
            for s in listeners:
                s.close()
            filtered.close()
            unfiltered.close()
        # the namespace side: IPv4 to ports[0] dropped (statement 1), IPv6
        # entirely (statement 2: the host's IPv6 address is the remote end)
        for fam in (4, 6):
            for port in ports:
                mine = (all_rows["family"] == fam) & ((all_rows["sport"] == port) | (all_rows["dport"] == port))
                assert mine.sum() >= 10, (fam, port)
        want = all_rows[(all_rows["family"] == 4) &
                        ((all_rows["sport"] == ports[1]) | (all_rows["dport"] == ports[1]))]
        assert packet_keys(kept) == packet_keys(want)


@pytest.mark.requires("vxlan")
def test_vxlan_between_namespaces():
    """Two namespaces joined by a veth pair carrying a VXLAN (VNI 42, UDP
    4789); TCP over the VXLAN. Rings on the underlay veth of the server's
    namespace: the unfiltered one decodes the inner packets (vxlan, vni,
    inner addresses and ports); the filtered one drops the connection the
    rule names and keeps the other, packet for packet."""
    from dkebpf import _packets
    from dkebpf.netlog.filter import parse_rules
    from dkebpf.netlog.filter_cbpf import socket_filter
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"dkt-nla{tag}", f"dkt-nlb{tag}"
    n = os.getpid() % 200 + 20
    under = (f"10.215.{n}.1", f"10.215.{n}.2")
    over = (f"192.168.{n}.1", f"192.168.{n}.2")
    ports = (18090, 18091)
    try:
        for ns in (ns_a, ns_b):
            sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns_a, "ip", "link", "add", "ua", "type", "veth", "peer", "name", "ub",
           "netns", ns_b)
        for ns, dev, me, peer, mine in ((ns_a, "ua", under[0], under[1], over[0]),
                                        (ns_b, "ub", under[1], under[0], over[1])):
            run = ["ip", "netns", "exec", ns]
            sh(*run, "ip", "addr", "add", f"{me}/24", "dev", dev)
            sh(*run, "ip", "link", "set", dev, "up")
            sh(*run, "ip", "link", "add", "vx42", "type", "vxlan", "id", "42", "local", me, "remote", peer,
               "dstport", "4789", "dev", dev)
            sh(*run, "ip", "addr", "add", f"{mine}/24", "dev", "vx42")
            sh(*run, "ip", "link", "set", "vx42", "up")
        rule = f"vni == 42 && src_port == {ports[0]} && ipv4"

        def open_in_b():
            listeners = []
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((over[1], port))
                s.listen()
                listeners.append(s)
            ifindex = socket.if_nametoindex("ub")
            placed = socket_filter(parse_rules(rule), "ub")
            assert [s.index for s in placed.in_kernel] == [0]
            return (listeners, _packets.PacketRing(placed.program, retire_ms=10, ifindex=ifindex),
                    _packets.PacketRing(socket_filter(None, "ub").program, retire_ms=10, ifindex=ifindex))

        listeners, filtered, unfiltered = call_in_netns(ns_b, open_in_b)
        stop = threading.Event()
        for s in listeners:
            threading.Thread(target=serve, args=(s, stop), daemon=True).start()
        try:
            clients = call_in_netns(ns_a, lambda: [socket.create_connection((over[1], p), timeout=5)
                                                   for p in ports])
            for c in clients:
                with c:
                    for size in (1, 1000, 20000):
                        c.sendall(b"v" * size)
                        got = 0
                        while got < size:
                            got += len(c.recv(65536))
            time.sleep(0.2)
            pkts_all = drain_rows(unfiltered)
            pkts_kept = drain_rows(filtered, 0.3)
        finally:
            stop.set()
            for s in listeners:
                s.close()
            filtered.close()
            unfiltered.close()
        tcp = pkts_all[pkts_all["proto"] == 6]
        assert len(tcp) >= 20 and set(tcp["vxlan"].tolist()) == {1} and set(tcp["vni"].tolist()) == {42}
        addrs = {socket.inet_ntoa(bytes(a)[:4]) for a in tcp["saddr"]} | \
            {socket.inet_ntoa(bytes(a)[:4]) for a in tcp["daddr"]}
        assert addrs == set(over)
        for port in ports:
            assert ((tcp["sport"] == port) | (tcp["dport"] == port)).sum() >= 10, port
        want = tcp[(tcp["sport"] == ports[1]) | (tcp["dport"] == ports[1])]
        assert packet_keys(pkts_kept[pkts_kept["proto"] == 6]) == packet_keys(want)
    finally:
        for ns in (ns_a, ns_b):
            sh("ip", "netns", "del", ns, check=False)


def packet_keys(rows):
    """The packets' headers as a sorted list: two sockets on one interface
    get the same packets, but a packet leaving on one CPU and one arriving
    on the other at once may reach them in either order."""
    return sorted((int(r["family"]), int(r["sport"]), int(r["dport"]), int(r["seq"]), int(r["ack"]),
                   int(r["payload_wire"]), int(r["tcp_flags"])) for r in rows)


def drain_rows(ring, seconds=1.0):
    """Every decoded row the ring yields in that time, as one array."""
    import numpy as np
    from dkebpf._packets import PKT_DTYPE
    parts = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ring.wait(50)
        pkts, _payload, _more = ring.read()
        if len(pkts):
            parts.append(pkts.copy())
    return np.concatenate(parts) if parts else np.zeros(0, PKT_DTYPE)

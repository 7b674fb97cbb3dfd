"""bpf-netlog's user-space netlog_blacklist path (plugins.netlog.ConnFilter):
PKT_DTYPE rows as the ring hands them, local/remote taken from the packet's
direction, the Cython evaluator's verdict per packet; then through the
connection table: a dropped connection leaves no chunk."""
import socket

import numpy as np

from dkebpf import _netlog, _packets
from dkebpf.netlog.filter import parse_rules
from dkebpf.plugins.netlog import ConnFilter

LOCAL, REMOTE = "10.1.0.2", "10.1.0.1"


def packet(pkts, i, tx, lport, rport, flags, seq, ack, payload=0):
    p = pkts[i]
    a, b = socket.inet_aton(LOCAL) + bytes(12), socket.inet_aton(REMOTE) + bytes(12)
    p["ts_ns"] = 1_000_000 * (i + 1)
    p["saddr"], p["daddr"] = (a, b) if tx else (b, a)
    p["sport"], p["dport"] = (lport, rport) if tx else (rport, lport)
    p["family"], p["proto"], p["tcp_flags"] = 4, 6, flags
    p["pkttype"] = _packets.PACKET_OUTGOING_TYPE if tx else 0
    p["seq"], p["ack"] = seq, ack
    p["payload_len"] = p["payload_wire"] = payload


def two_connections():
    """A handshake and 100 bytes in on local port 80 and on local port 81."""
    pkts = np.zeros(8, _packets.PKT_DTYPE)
    for base, port in ((0, 80), (4, 81)):
        packet(pkts, base, False, port, 40000, 0x02, 100, 0)           # SYN in
        packet(pkts, base + 1, True, port, 40000, 0x12, 500, 101)      # SYN-ACK out
        packet(pkts, base + 2, False, port, 40000, 0x10, 101, 501)     # ACK in
        packet(pkts, base + 3, False, port, 40000, 0x18, 101, 501, 100)
    return pkts


def test_statements_see_the_local_end_as_src_in_both_directions():
    pkts = two_connections()
    keep = ConnFilter(parse_rules("src_port == 81 && dst_port == 40000").statements, "eth0").keep(pkts)
    assert keep.tolist() == [True] * 4 + [False] * 4


def test_per_connection_statements_and_nic_name():
    pkts = two_connections()
    rules = parse_rules("has_suffix(ip_daddr, '.1') && src_port == 80\nnic_name == 'other'").statements
    assert ConnFilter(rules, "eth0").keep(pkts).tolist() == [False] * 4 + [True] * 4
    assert not ConnFilter(rules, "other").keep(pkts).any()


def test_dropped_packets_and_connections_counted():
    pkts = two_connections()
    flt = ConnFilter(parse_rules("src_port == 81").statements, "eth0")
    flt.keep(pkts[:6])
    flt.keep(pkts[6:])                      # the same connection in the next batch: not again
    assert (flt.packets, flt.connections) == (4, 1)
    flt.interval()
    flt.keep(pkts[4:])                      # still sending one interval later: not again
    assert (flt.packets, flt.connections) == (8, 1)
    flt.interval()
    flt.interval()                          # silent for a whole interval: forgotten
    flt.keep(pkts[4:])
    assert (flt.packets, flt.connections) == (12, 2)


def test_kubernetes_fields_are_empty_names():
    pkts = two_connections()
    assert ConnFilter(parse_rules("k8s_src_pod != ''").statements, "eth0").keep(pkts).all()
    assert not ConnFilter(parse_rules("k8s_dst_namespace == ''").statements, "eth0").keep(pkts).any()


def test_a_dropped_connection_leaves_no_chunk():
    pkts = two_connections()
    keep = ConnFilter(parse_rules("has_prefix(ip_saddr, '10.1.') && src_port == 81").statements,
                      "eth0").keep(pkts)
    table = _netlog.ConnTable()
    table.add(pkts[keep])
    chunks, _x = table.collect(10**10, True)
    assert chunks["lport"].tolist() == [80]
    assert int(chunks["rx_bytes"][0]) == 100
    assert table.counters()["new_connections"] == 1

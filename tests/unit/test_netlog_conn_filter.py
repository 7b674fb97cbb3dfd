"""bpf-netlog's user-space netlog_blacklist path (dkebpf.netlog.conn_filter):
PKT_DTYPE rows as the ring hands them, local/remote taken from the packet's
direction, one verdict per connection (cached, judged again when the pods
change) applied to every packet; then through the connection table: a
dropped connection leaves no chunk. The k8s_* fields from a real
K8sEnrichment store (fed as the reflectors feed it) and a HOST_PROC tree."""
import random
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _netlog, _netlog_filter as nf, _packets
from dkebpf.netlog.filter import parse_rules
from dkebpf.enrich.k8s import K8sEnrichment
from dkebpf.netlog.conn_filter import IDLE_NS, ConnFilter
from dkebpf.netlog.k8s import NetlogK8s
from reference.netlog_filter_ref import first_match
from support import kube_apiserver as ks
from support.netlog_filter_gen import connection, rules_text

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


def test_dropped_packets_and_connections_counted_each_connection_judged_once():
    pkts = two_connections()
    last = int(pkts["ts_ns"].max())
    flt = ConnFilter(parse_rules("src_port == 81").statements, "eth0")
    flt.keep(pkts[:6])
    flt.keep(pkts[6:])                      # the same connection in the next batch: not again
    assert (flt.packets, flt.connections) == (4, 1)
    assert flt.cache.evaluations == 2       # two connections, eight packets
    flt.interval(last + IDLE_NS // 2)       # still sending: not forgotten, not judged again
    flt.keep(pkts[4:])
    assert (flt.packets, flt.connections, flt.cache.evaluations) == (8, 1, 2)
    flt.interval(last + IDLE_NS + 1)        # silent for IDLE_NS: forgotten
    assert len(flt.cache) == 0
    flt.keep(pkts[4:])
    assert (flt.packets, flt.connections, flt.cache.evaluations) == (12, 2, 3)


def test_without_kubernetes_data_the_pod_fields_are_empty():
    pkts = two_connections()
    pods = NetlogK8s(None)
    assert ConnFilter(parse_rules("k8s_src_pod != ''").statements, "eth0", pods).keep(pkts).all()
    assert not ConnFilter(parse_rules("k8s_dst_namespace == ''").statements, "eth0", pods).keep(pkts).any()


NODE = "node-a"
CID = "a1" * 32


def cluster(tmp_path):
    """A store as the reflectors leave it: web-0 (this node, container CID) and
    client-1 (another node) at REMOTE; a HOST_PROC where pid 100 runs in
    container CID inside the network namespace 'pod-netns' (its inode)."""
    web = ks.pod("web-0", "shop", NODE, "10.244.1.5", container_ids=[CID])
    client = ks.pod("client-1", "front", "node-b", REMOTE)
    uid = web["metadata"]["uid"].replace("-", "_")
    (tmp_path / "100" / "ns").mkdir(parents=True)
    (tmp_path / "100" / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/"
        f"cri-containerd-{CID}.scope\n")
    (tmp_path / "100" / "ns" / "net").write_text("")
    (tmp_path / "200" / "ns").mkdir(parents=True)   # a process of the namespace outside any pod
    (tmp_path / "200" / "cgroup").write_text("0::/system.slice/sshd.service\n")
    (tmp_path / "200" / "ns" / "net").write_text("")
    e = K8sEnrichment(None, NODE, host_proc=str(tmp_path))
    e.store.replace("Pod", "local", [[web]])
    e.store.replace("Pod", "remote", [[client]])
    netns = (tmp_path / "100" / "ns" / "net").stat().st_ino
    return e, client, NetlogK8s(e, str(tmp_path)), netns


def test_pod_fields_local_by_the_namespace_remote_by_address(tmp_path):
    e, _client, pods, netns = cluster(tmp_path)
    pkts = two_connections()
    rule = "k8s_src_pod == 'web-0' && k8s_dst_namespace == 'front' && src_port == 81"
    in_pod = ConnFilter(parse_rules(rule).statements, "eth0", pods, netns, host_network=False)
    assert in_pod.keep(pkts).tolist() == [True] * 4 + [False] * 4
    # on the host's side the local address (10.1.0.2) is no pod's: nothing matches
    on_host = ConnFilter(parse_rules(rule).statements, "eth0", pods, netns, host_network=True)
    assert on_host.keep(pkts).all()
    # without a pod process the namespace is no pod's either
    other = (tmp_path / "200" / "ns" / "net").stat().st_ino
    assert ConnFilter(parse_rules(rule).statements, "eth0", pods, other, host_network=False).keep(pkts).all()


def test_verdicts_judged_again_when_the_pods_change(tmp_path):
    e, client, pods, netns = cluster(tmp_path)
    pkts = two_connections()
    flt = ConnFilter(parse_rules("k8s_dst_pod == 'blocked-1'").statements, "eth0", pods, netns, False)
    assert flt.keep(pkts).all()
    assert flt.keep(pkts).all() and flt.cache.evaluations == 2   # cached: not judged again
    # the remote address now belongs to another pod (a watch event)
    e.store.apply("Pod", "remote", "DELETED", client)
    blocked = ks.pod("blocked-1", "front", "node-b", REMOTE)
    e.store.apply("Pod", "remote", "ADDED", blocked)
    assert not flt.keep(pkts).any()
    assert (flt.cache.evaluations, flt.connections, flt.packets) == (4, 2, 8)
    assert not flt.keep(pkts).any() and flt.cache.evaluations == 4
    e.store.apply("Pod", "remote", "DELETED", blocked)
    assert flt.keep(pkts).all() and flt.cache.evaluations == 6


def test_a_dropped_connection_leaves_no_chunk():
    """The table's own use of the filter (add() with conn_filter: the
    verdicts applied while it folds, as fold_ring does) and keep() then
    add() give the same table and the same counts."""
    rule = parse_rules("has_prefix(ip_saddr, '10.1.') && src_port == 81").statements
    pkts = two_connections()
    apart, inside = ConnFilter(rule, "eth0"), ConnFilter(rule, "eth0")
    tables = _netlog.ConnTable(seed=1), _netlog.ConnTable(seed=1)
    tables[0].add(pkts[apart.keep(pkts)])
    tables[1].add(pkts[:3], None, inside)   # two batches: the second's connection already judged
    tables[1].add(pkts[3:], None, inside)
    got = [t.collect(10**10, True).chunks for t in tables]
    assert got[0].tobytes() == got[1].tobytes()
    chunks = got[1]
    assert chunks["lport"].tolist() == [80]
    assert int(chunks["rx_bytes"][0]) == 100
    assert tables[0].counters() == tables[1].counters()
    assert tables[1].counters()["new_connections"] == 1 and tables[1].packets == 4
    assert (inside.packets, inside.connections, inside.cache.evaluations) == (4, 1, 2)
    assert (apart.packets, apart.connections, apart.cache.evaluations) == (4, 1, 2)


def test_a_filter_that_fails_while_the_table_folds_raises_there():
    """An error judging connections (in the pods' lookup, say) stops the
    fold and is raised by add(); the table folded nothing of the batch."""
    class Failing(ConnFilter):
        def settle(self, todo, gen):
            raise OSError("pods unreachable")
    table = _netlog.ConnTable()
    flt = Failing(parse_rules("src_port == 81").statements, "eth0")
    with pytest.raises(OSError, match="pods unreachable"):
        table.add(two_connections(), None, flt)
    assert table.packets == 0
    ok = ConnFilter(parse_rules("src_port == 81").statements, "eth0")
    table.add(two_connections(), None, ok)   # the next call folds again
    assert table.packets == 4


class _NamesByKey:
    """A pods view (NetlogK8s's fill_names and generation) over a dict
    connection key -> names, changed by the test as watch events would."""

    def __init__(self):
        self.generation = 0
        self.names = {}

    def fill_names(self, conns, names, netns, host_network):
        for row in conns:
            key = (bytes(row["laddr"]), bytes(row["raddr"]), int(row["lport"]), int(row["rport"]),
                   int(row["proto"]), int(row["vni"]))
            got = self.names.get(key, {})
            for field, column in nf.NAME_COLUMNS.items():
                if field != "nic_name":
                    row[column] = names.intern(got.get(field, b""))


def _packets_of(conns, rng):
    """Both directions of every connection, interleaved, as PKT_DTYPE rows."""
    rows = []
    for c in conns:
        for tx in (True, False, rng.random() < 0.5):
            la, ra = c["laddr"].ljust(16, b"\0"), c["raddr"].ljust(16, b"\0")
            rows.append((c, tx, la, ra))
    rng.shuffle(rows)
    pkts = np.zeros(len(rows), _packets.PKT_DTYPE)
    for i, (c, tx, la, ra) in enumerate(rows):
        pkts[i]["saddr"], pkts[i]["daddr"] = (la, ra) if tx else (ra, la)
        pkts[i]["sport"], pkts[i]["dport"] = (c["lport"], c["rport"]) if tx else (c["rport"], c["lport"])
        pkts[i]["family"], pkts[i]["proto"], pkts[i]["ts_ns"] = c["family"], c["proto"], i + 1
        pkts[i]["vni"], pkts[i]["vxlan"] = c["vni"], 1 if c["vni"] else 0
        pkts[i]["pkttype"] = _packets.PACKET_OUTGOING_TYPE if tx else 0
    return pkts, [r[0] for r in rows]


@settings(max_examples=200, deadline=None)
@given(rules_text(), st.lists(connection(), min_size=1, max_size=12), st.integers(0, 2**32 - 1))
def test_cached_verdicts_equal_the_reference_per_packet_as_names_change(text, conns, seed):
    rng = random.Random(seed)
    statements = parse_rules(text).statements
    pods = _NamesByKey()
    by_key = {}
    for c in conns:
        by_key.setdefault((c["laddr"].ljust(16, b"\0"), c["raddr"].ljust(16, b"\0"), c["lport"], c["rport"],
                           c["proto"], c["vni"]), c)
    conns = list(by_key.values())
    flt = ConnFilter(statements, "eth0", pods)
    for step in range(3):
        # the names of some connections change (a pod deleted, another at its address)
        if step:
            pods.generation += 1
            for c in conns:
                if rng.random() < 0.5:
                    for n in ("k8s_src_pod", "k8s_dst_pod", "k8s_src_namespace", "k8s_dst_namespace"):
                        c[n] = rng.choice((b"", b"web-0", b"kube-system", b"datakit-x"))
        pods.names = {k: dict(c) for k, c in by_key.items()}
        pkts, order = _packets_of(conns, rng)
        cut = rng.randrange(len(pkts) + 1)
        got = np.concatenate([flt.keep(pkts[:cut]), flt.keep(pkts[cut:])])
        want = [first_match(statements, dict(c, nic_name=b"eth0")) < 0 for c in order]
        assert got.tolist() == want


def test_log_tags_local_pod_by_namespace_remote_by_address(tmp_path):
    import pyarrow as pa
    _e, _client, pods, netns = cluster(tmp_path)
    rows = [  # (netns, host_network, local ip, remote ip, remote port, direction)
        (str(netns), "false", LOCAL, REMOTE, "40000", "incoming"),
        (str(netns), "false", LOCAL, REMOTE, "80", "unknown"),
        ("4026531840", "true", LOCAL, REMOTE, "80", "outgoing"),   # the host's: local by address, none
    ]
    cols = dict(zip(("netns", "host_network", "src_ip", "dst_ip", "dst_port", "direction"), zip(*rows)))
    batch = pa.RecordBatch.from_pydict({**{k: pa.array(v, pa.string()) for k, v in cols.items()},
                                        "l4_proto": pa.array(["tcp"] * 3), "chunk_id": pa.array([1, 2, 3])})
    out = pods.log_tags(batch).to_pydict()
    assert set(pods.tag_names()) <= set(out)
    assert out["src_k8s_pod_name"] == ["web-0", "web-0", "N/A"]
    assert out["dst_k8s_pod_name"] == ["client-1"] * 3 and out["dst_k8s_namespace"] == ["front"] * 3
    assert out["server_k8s_pod_name"] == ["web-0", "client-1", "client-1"]   # unknown: local is the client
    assert out["client_k8s_pod_name"] == ["client-1", "web-0", "N/A"]
    assert out["sub_source"] == ["K8s"] * 3
    # the interface's own pod (no runtime socket: from the API, no container name)
    assert out["k8s_pod_name"] == ["web-0", "web-0", None] and out["k8s_namespace"] == ["shop", "shop", None]
    assert out["k8s_container_name"] == [None] * 3
    assert out["chunk_id"] == [1, 2, 3]
    assert NetlogK8s(None).log_tags(batch) is batch and NetlogK8s(None).tag_names() == []


def test_cache_grows_then_starts_anew_when_full():
    pkts = np.zeros(12, _packets.PKT_DTYPE)
    for i in range(12):   # twelve connections, one packet each
        packet(pkts, i, True, 1000 + i, 80, 0x10, 1, 1)
    statements = parse_rules("src_port >= 1006").statements
    flt = ConnFilter(statements, "eth0", capacity=8)
    assert flt.keep(pkts[:2]).all() and len(flt.cache) == 2
    assert flt.keep(pkts[2:7]).tolist() == [True] * 4 + [False]    # grown from 2 to 7 entries
    assert (len(flt.cache), flt.cache.resets, flt.cache.evaluations) == (7, 0, 7)
    assert flt.connections == 1   # port 1006
    # 7 cached + 2 packets might be 9 connections, more than 8: emptied first, but for the dropped
    # connection, which keeps its verdict: counted once, however often the cache starts anew
    assert flt.keep(pkts[7:9]).tolist() == [False] * 2
    assert (len(flt.cache), flt.cache.resets, flt.connections) == (3, 1, 3)
    assert flt.keep(pkts[6:7]).tolist() == [False] and flt.connections == 3
    # a batch longer than the capacity is judged in parts, every packet still
    assert flt.keep(pkts).tolist() == [True] * 6 + [False] * 6

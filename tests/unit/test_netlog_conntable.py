"""dkebpf._netlog.ConnTable against the pure-Python reference
(tests/reference/netlog_ref.py) on generated packet sequences: counts,
retransmits (duplicate ACKs and keep-alives never count), SYN
retransmits, chunk cuts and chunk ids; sequence numbers near the 2^32 wrap."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _netlog
from dkebpf._packets import PKT_DTYPE
from reference import netlog_ref

PACKET_OUTGOING = 4

packet = st.fixed_dictionaries({
    "tx": st.booleans(),
    "conn": st.integers(0, 2),
    "proto": st.sampled_from([6, 6, 6, 17]),
    "flags": st.sampled_from([0x10, 0x18, 0x18, 0x02, 0x12, 0x11, 0x04, 0x10]),
    "seq_step": st.sampled_from([0, 0, 1, 100, 1448, -1, -1448, -100]),
    "length": st.sampled_from([0, 0, 1, 100, 1448]),
})


def build(draws, base):
    """Packets of up to three connections with plausible, jumpy sequence
    numbers (steps back give retransmits), as PKT_DTYPE rows and dicts."""
    seqs = {}
    rows, refs = [], []
    for i, d in enumerate(draws):
        k = (d["conn"], d["tx"])
        s = (seqs.get(k, base + 7919 * d["conn"] + (0 if d["tx"] else 1 << 20)) + d["seq_step"]) & 0xFFFFFFFF
        seqs[k] = (s + d["length"]) & 0xFFFFFFFF
        local, remote = 40000 + d["conn"], 80
        p = {"tx": d["tx"], "sport": local if d["tx"] else remote, "dport": remote if d["tx"] else local,
             "proto": d["proto"], "flags": d["flags"] if d["proto"] == 6 else 0, "seq": s,
             "ack": 0, "length": d["length"]}
        refs.append(p)
        rows.append(p)
    a = np.zeros(len(rows), PKT_DTYPE)
    for i, p in enumerate(rows):
        a[i]["ts_ns"] = 1_000_000 + i
        a[i]["family"] = 4
        a[i]["proto"] = p["proto"]
        a[i]["sport"], a[i]["dport"] = p["sport"], p["dport"]
        a[i]["pkttype"] = PACKET_OUTGOING if p["tx"] else 0
        a[i]["tcp_flags"] = p["flags"]
        a[i]["seq"] = p["seq"]
        a[i]["payload_wire"] = p["length"]
        a[i]["saddr"] = bytes([10, 0, 0, 1 if p["tx"] else 2]) + bytes(12)
        a[i]["daddr"] = bytes([10, 0, 0, 2 if p["tx"] else 1]) + bytes(12)
    return a, refs


KEYS = ("chunk_id", "tx_packets", "rx_packets", "tx_bytes", "rx_bytes", "tx_retrans", "rx_retrans", "syn_retrans")


@settings(max_examples=300, deadline=None)
@given(st.lists(packet, min_size=1, max_size=700), st.sampled_from([0, 0xFFFFF000, 0x7FFFFF00]))
def test_conntable_agrees_with_the_reference(draws, base):
    pkts, refs = build(draws, base)
    t = _netlog.ConnTable(max_conns=16)
    # in pieces, as ring reads come, an interval's collect after each (no open chunk is 30 s old)
    parts = []
    for lo in range(0, len(pkts), 97):
        t.add(pkts[lo:lo + 97])
        parts.append(t.collect(0))
    parts.append(t.collect(0, True))
    chunks = np.concatenate([p.chunks for p in parts])
    flows = np.concatenate([p.flows for p in parts])
    # the flows of the intervals add up to the chunks: netflow sees every packet once
    for k in ("tx_packets", "rx_packets", "tx_bytes", "rx_bytes", "tx_retrans", "rx_retrans"):
        assert int(flows[k].sum()) == int(chunks[k].sum()), k
    # one message per chunk, its series every packet of it
    import json
    messages = [json.loads(m) for p in parts for m in p.messages.to_pylist()]
    assert len(messages) == len(chunks)
    for c, m in zip(chunks, messages):
        body = m[m["l4_proto"]]
        assert body["chunk_id"] == int(c["chunk_id"]) and body["series_unwritten"] == 0
        assert len(body[m["l4_proto"] + "_series"]) == int(c["tx_packets"] + c["rx_packets"])
    got = sorted(((int(c["lport"]), int(c["rport"]), int(c["proto"])), tuple(int(c[k]) for k in KEYS))
                 for c in chunks)
    want = sorted((key, tuple(ch[k] for k in KEYS)) for key, ch in netlog_ref.chunks(refs))
    assert got == want


def test_duplicate_acks_and_keepalives_are_not_retransmits():
    # data 1000..2000 sent, three duplicate pure ACKs, a keep-alive probe (seq = next - 1, 1 byte)
    draws = [dict(tx=True, conn=0, proto=6, flags=0x18, seq_step=0, length=1000)]
    draws += [dict(tx=True, conn=0, proto=6, flags=0x10, seq_step=0, length=0)] * 3
    draws += [dict(tx=True, conn=0, proto=6, flags=0x10, seq_step=-1, length=1)]
    pkts, _ = build(draws, 1000)
    t = _netlog.ConnTable()
    t.add(pkts)
    chunks = t.collect(0, True).chunks
    assert (int(chunks[0]["tx_packets"]), int(chunks[0]["tx_retrans"])) == (5, 0)


def test_reordered_segment_is_not_a_retransmit_a_resent_one_is():
    # segments 1000+0..3 sent as 0, 2, 1 (reordered: 1 fills a hole below the highest seq), 3,
    # then 2 again (its bytes were seen: a retransmission), then a piece overlapping 3's end
    def seg(seq, length=100):
        return dict(tx=False, conn=0, proto=6, flags=0x18, seq_step=0, length=length, seq=seq)
    draws = [seg(1000), seg(1200), seg(1100), seg(1300), seg(1200), seg(1350, 100)]
    pkts, _ = build([dict(d, seq_step=0) for d in draws], 0)
    pkts["seq"] = [d["seq"] for d in draws]
    t = _netlog.ConnTable()
    t.add(pkts)
    chunks = t.collect(0, True).chunks
    assert (int(chunks[0]["rx_packets"]), int(chunks[0]["rx_retrans"])) == (6, 2)


def test_many_holes_are_bounded():
    # 20 segments each leaving a hole: the oldest holes merge (count as seen), the newest stay holes
    seqs = [5000 + 200 * i for i in range(20)]
    holes = [s + 100 for s in seqs]
    draws = [dict(tx=True, conn=0, proto=6, flags=0x18, seq_step=0, length=100)] * (len(seqs) + 2)
    pkts, refs = build(draws, 0)
    pkts["seq"] = seqs + [holes[-1], holes[0]]
    for r, s in zip(refs, pkts["seq"]):
        r["seq"] = int(s)
    t = _netlog.ConnTable()
    t.add(pkts)
    chunks = t.collect(0, True).chunks
    # the newest hole filled: new bytes; the oldest one: merged away, so counted
    assert int(chunks[0]["tx_retrans"]) == 1
    assert int(chunks[0]["tx_retrans"]) == netlog_ref.chunks(refs)[0][1]["tx_retrans"]


def test_direction_of_connections_seen_mid_stream():
    """No SYN seen: a SYN|ACK tells who answered, else the first HTTP
    request, else the port rule (settle_direction: a listening local port
    is incoming, an ephemeral local port to a lower remote one outgoing)."""
    from dkebpf.plugins.netlog import settle_direction
    draws = [dict(tx=True, conn=0, proto=6, flags=0x12, seq_step=0, length=0),    # we answer: incoming
             dict(tx=True, conn=1, proto=6, flags=0x18, seq_step=0, length=18),   # we send a request: outgoing
             dict(tx=False, conn=2, proto=6, flags=0x10, seq_step=0, length=0)]   # nothing tells
    pkts, _ = build(draws, 0)
    payload = np.frombuffer(b"GET / HTTP/1.1\r\n\r\n", np.uint8)
    pkts["payload_len"] = [0, 18, 0]
    t = _netlog.ConnTable()
    t.add(pkts, payload)
    chunks = t.collect(0, True).chunks
    chunks = np.sort(chunks, order="lport")
    assert list(chunks["direction"]) == [1, 2, 0]
    listened, ephemeral = chunks.copy(), chunks.copy()
    settle_direction(listened, {40002}, 32768)
    settle_direction(ephemeral, set(), 32768)
    assert (int(listened["direction"][2]), int(ephemeral["direction"][2])) == (1, 2)
    settle_direction(chunks, set(), 50000)   # 40002 is no ephemeral port then: stays unknown
    assert int(chunks["direction"][2]) == 0


def _tcp_rows(spec, t0=1_000_000_000):
    """PKT_DTYPE rows of one connection 10.0.0.1:40000 (local) <->
    10.0.0.2:80 from (ts offset ns, tx, flags, seq, ack, payload, window)."""
    a = np.zeros(len(spec), PKT_DTYPE)
    mine, peer = bytes.fromhex("02aa00000001"), bytes.fromhex("02bb00000002")
    for i, (dt, tx, flags, seq, ack, n, win) in enumerate(spec):
        a[i]["ts_ns"] = t0 + dt
        a[i]["family"], a[i]["proto"] = 4, 6
        a[i]["sport"], a[i]["dport"] = (40000, 80) if tx else (80, 40000)
        a[i]["pkttype"] = PACKET_OUTGOING if tx else 0
        a[i]["tcp_flags"], a[i]["seq"], a[i]["ack"] = flags, seq, ack
        a[i]["payload_wire"], a[i]["window"] = n, win
        a[i]["saddr"] = bytes([10, 0, 0, 1 if tx else 2]) + bytes(12)
        a[i]["daddr"] = bytes([10, 0, 0, 2 if tx else 1]) + bytes(12)
        a[i]["smac"], a[i]["dmac"] = (mine, peer) if tx else (peer, mine)
    return a


def test_message_is_the_originals_with_its_packet_series():
    """The original's message (reference 1.6): positions, mac_map, one row
    per packet with relative seq/ack (ack 0 without the ACK flag), raw
    window, time from the chunk's first packet; written in C."""
    import json
    pkts = _tcp_rows([(0, True, 0x02, 0xFFFFFFF0, 0, 0, 64240),             # SYN near the wrap
                      (500, False, 0x12, 7000, 0xFFFFFFF1, 0, 65160),        # SYN|ACK
                      (900, True, 0x10, 0xFFFFFFF1, 7001, 0, 502),
                      (1000, True, 0x18, 0xFFFFFFF1, 7001, 100, 502),        # data across the wrap
                      (2000, False, 0x10, 7001, 0x55, 0, 509),
                      (3000, False, 0x14, 7001, 0x55, 0, 0)])                # RST|ACK
    t = _netlog.ConnTable()
    t.add(pkts)
    got = t.collect(0, True)
    assert len(got.chunks) == 1 and len(got.messages) == 1
    assert int(got.chunks["msg_len"][0]) == len(got.messages[0].as_py())
    assert json.loads(got.messages[0].as_py()) == {"l4_proto": "tcp", "tcp": {
        "chunk_id": 1, "tx_seq_pos": 0xFFFFFFEF, "rx_seq_pos": 6999, "time_pos": 1_000_000_000,
        "mac_map": {"02:aa:00:00:00:01": "1", "02:bb:00:00:00:02": "2"},
        "tcp_series_col_name": ["txrx", "src_mac", "dst_mac", "flags", "seq", "ack_seq", "payload_size", "win",
                                "ts"],
        "tcp_series": [["tx", "1", "2", "SYN", 1, 0, 0, 64240, 0],
                       ["rx", "2", "1", "SYN|ACK", 1, 2, 0, 65160, 500],
                       ["tx", "1", "2", "ACK", 2, 2, 0, 502, 900],
                       ["tx", "1", "2", "PSH|ACK", 2, 2, 100, 502, 1000],
                       ["rx", "2", "1", "ACK", 2, 102, 0, 509, 2000],
                       ["rx", "2", "1", "RST|ACK", 2, 102, 0, 0, 3000]],
        "rx_bytes": 0, "tx_bytes": 100, "rx_packets": 3, "tx_packets": 3, "tx_retrans": 0, "rx_retrans": 0,
        "tx_rst": 0, "rx_rst": 1, "series_unwritten": 0}}
    assert t.counters()["series_unwritten"] == 0


def test_series_is_bounded_and_counts_what_it_could_not_keep():
    """A chunk keeps at most its packets; past the table's row budget, or
    with more MAC addresses than a chunk's map holds, packets are counted,
    not written; every message stays valid JSON."""
    import json
    spec = [(i, True, 0x10, 1000 + i, 5, 0, 100) for i in range(40)]
    t = _netlog.ConnTable(series_budget=16)   # the first allocation of one series
    t.add(_tcp_rows(spec))
    got = t.collect(0, True)
    msg = json.loads(got.messages[0].as_py())["tcp"]
    assert len(msg["tcp_series"]) == 16 and msg["series_unwritten"] == 24 and msg["tx_packets"] == 40
    assert t.counters()["series_unwritten"] == 24
    pkts = _tcp_rows(spec[:12])
    pkts["smac"] = [bytes([2, 0, 0, 0, 0, i]) for i in range(12)]   # 12 senders + the one receiver
    t = _netlog.ConnTable()
    t.add(pkts)
    msg = json.loads(t.collect(0, True).messages[0].as_py())["tcp"]
    assert len(msg["mac_map"]) == 8 and len(msg["tcp_series"]) == 7 and msg["series_unwritten"] == 5
    assert _netlog.ConnTable(series=False).collect(0, True).messages is None


def test_open_chunk_goes_out_at_30_s_and_flows_every_interval():
    """The original's chunk rule without waiting: collect() times are given.
    A living connection's chunk goes out once its last packet is 30 s old,
    or its packets span 30 s; the next packet starts chunk_id + 1. Its
    flow (netflow's input) comes at every collect, chunk out or not."""
    s = 1_000_000_000
    t0 = 5 * s
    t = _netlog.ConnTable()
    t.add(_tcp_rows([(0, True, 0x02, 100, 0, 0, 1), (1000, False, 0x12, 900, 101, 0, 1),
                     (2000, True, 0x10, 101, 901, 0, 1), (3000, True, 0x18, 101, 901, 10, 1)], t0))
    got = t.collect(t0 + 10 * s)
    assert len(got.chunks) == 0 and len(got.messages) == 0     # 10 s old: held
    assert len(got.flows) == 1 and int(got.flows["tx_bytes"][0]) == 10 and got.flows["chunk_syn"][0] == 1
    t.add(_tcp_rows([(20 * s, False, 0x18, 901, 111, 7, 1)], t0))
    got = t.collect(t0 + 21 * s)
    assert len(got.chunks) == 0
    assert (int(got.flows["rx_bytes"][0]), int(got.flows["tx_bytes"][0]), int(got.flows["chunk_syn"][0])) == (7, 0, 0)
    got = t.collect(t0 + 50 * s)   # the last packet (at 20 s) is 30 s old
    assert list(got.chunks["chunk_id"]) == [1] and int(got.chunks["rx_packets"][0]) == 2
    assert len(got.flows) == 0 and len(t) == 1   # nothing new; the connection lives on
    # packets spanning 30 s: out at the first collect after, however recent the last one
    t.add(_tcp_rows([(60 * s, True, 0x18, 111, 908, 5, 1), (91 * s, True, 0x18, 116, 908, 5, 1)], t0))
    got = t.collect(t0 + 92 * s)
    assert list(got.chunks["chunk_id"]) == [2] and int(got.chunks["tx_packets"][0]) == 2
    assert int(got.flows["tx_bytes"][0]) == 10
    # with age 0, every collect emits (what the tests of counts use)
    t = _netlog.ConnTable(chunk_age_ns=0)
    t.add(_tcp_rows([(0, True, 0x18, 1, 1, 3, 1)], t0))
    assert len(t.collect(t0 + 1).chunks) == 1


def test_memory_counts_the_series_and_messages():
    t = _netlog.ConnTable(max_conns=16)
    before = t.memory()
    assert before["series"] == 0 and before["messages"] == 0 and before["connections"] > 0
    t.add(_tcp_rows([(i, True, 0x10, 1000 + i, 5, 0, 100) for i in range(20)]))
    assert t.memory()["series"] == 32 * 32   # 16 rows, then 32
    got = t.collect(0, True)
    m = t.memory()
    # the connection ended; the message buffer went with the messages (freed with them)
    assert m["series"] == 0 and m["messages"] == 0
    first = got.messages.to_pylist()
    assert len(first) == 1 and first[0].startswith('{"l4_proto":"tcp"')
    t.add(_tcp_rows([(100 + i, True, 0x10, 2000 + i, 5, 0, 7) for i in range(20)]))
    second = t.collect(0, True).messages.to_pylist()   # written into a new buffer
    assert got.messages.to_pylist() == first != second   # not written over
    assert t.collect(0, True).messages.to_pylist() == [] and t.memory()["messages"] == 0

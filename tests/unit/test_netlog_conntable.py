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
    # in pieces, as ring reads come
    for lo in range(0, len(pkts), 97):
        t.add(pkts[lo:lo + 97])
    chunks, _x = t.collect(0, True)
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
    chunks, _x = t.collect(0, True)
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
    chunks, _x = t.collect(0, True)
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
    chunks, _x = t.collect(0, True)
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
    chunks, _x = t.collect(0, True)
    chunks = np.sort(chunks, order="lport")
    assert list(chunks["direction"]) == [1, 2, 0]
    listened, ephemeral = chunks.copy(), chunks.copy()
    settle_direction(listened, {40002}, 32768)
    settle_direction(ephemeral, set(), 32768)
    assert (int(listened["direction"][2]), int(ephemeral["direction"][2])) == (1, 2)
    settle_direction(chunks, set(), 50000)   # 40002 is no ephemeral port then: stays unknown
    assert int(chunks["direction"][2]) == 0

"""The IP -> domain cache (TTL and size bounds, fake clock) and the
dnsflow per-interval aggregation (exact counts, latency mean/max, '*'
ports, direction and forwarded exchanges against the reference rule), in
steps during the interval, bounded."""
import struct
import types

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _dns, _packets
from dkebpf.enrich.dns_cache import DnsCache
from dkebpf.enrich.local_addrs import address_keys
from dkebpf.plugins.dnsflow import DNSFLOW_FIELDS, DNSFLOW_TAGS, combine, finish, partial
from reference import dns_ref as ref

S = 1_000_000_000


class Clock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


def v16(*addrs):
    out = np.zeros(len(addrs), "V16")
    for i, a in enumerate(addrs):
        out[i] = a + bytes(16 - len(a))
    return out


IP1, IP2, IP3 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])
IP6 = bytes.fromhex("fd000000000000000000000000000001")
# this host's addresses in these tests
LOCAL = {(4, IP1 + bytes(12))}
LOCAL_KEYS = np.unique(address_keys(np.array([4], np.uint8), v16(IP1)))


def test_lookup_hits_misses_and_families():
    c = DnsCache(clock=Clock())
    c.update(np.array([4, 6], np.uint8), v16(IP1, IP6), np.array([60, 60]), ["a.test", "six.test"])
    got = c.lookup(np.array([4, 4, 6, 6, 4], np.uint8), v16(IP1, IP2, IP6, IP1, IP1))
    # the same 16 bytes under another family is another key
    assert got.to_pylist() == ["a.test", None, "six.test", None, "a.test"]
    assert c.lookup(np.array([], np.uint8), v16()).to_pylist() == []


def test_ttl_is_clamped_and_entries_expire():
    clock = Clock()
    c = DnsCache(min_ttl_s=300, max_ttl_s=3600, clock=clock)
    c.update(np.array([4, 4, 4], np.uint8), v16(IP1, IP2, IP3), np.array([0, 1000, 10 ** 9]),
             pa.array(["zero.test", "k.test", "long.test"]))
    fam = np.array([4, 4, 4], np.uint8)
    addrs = v16(IP1, IP2, IP3)
    clock.t = 299 * S
    assert c.lookup(fam, addrs).to_pylist() == ["zero.test", "k.test", "long.test"]
    clock.t = 300 * S       # TTL 0 lives min_ttl
    assert c.lookup(fam, addrs).to_pylist() == [None, "k.test", "long.test"]
    clock.t = 1000 * S
    assert c.lookup(fam, addrs).to_pylist() == [None, None, "long.test"]
    clock.t = 3600 * S      # a huge TTL lives max_ttl
    assert c.lookup(fam, addrs).to_pylist() == [None, None, None]
    assert c.purge() == 3 and len(c) == 0


def test_size_bound_evicts_oldest_and_refresh_moves_to_the_end():
    c = DnsCache(max_entries=2, clock=Clock())
    fam = np.array([4], np.uint8)
    c.update(fam, v16(IP1), np.array([60]), ["one"])
    c.update(fam, v16(IP2), np.array([60]), ["two"])
    c.update(fam, v16(IP1), np.array([60]), ["one-again"])    # refreshed: now the newest
    c.update(fam, v16(IP3), np.array([60]), ["three"])
    got = c.lookup(np.array([4, 4, 4], np.uint8), v16(IP1, IP2, IP3)).to_pylist()
    assert got == ["one-again", None, "three"] and len(c) == 2 and c.evicted == 1


def test_last_row_wins_within_one_update():
    c = DnsCache(clock=Clock())
    c.update(np.array([4, 4], np.uint8), v16(IP1, IP1), np.array([60, 60]), ["first", "second"])
    assert c.lookup(np.array([4], np.uint8), v16(IP1)).to_pylist() == ["second"]


def pairs(rows):
    arr = np.zeros(len(rows), _dns.PAIR_DTYPE)
    for i, r in enumerate(rows):
        for k, v in r.items():
            if k == "qname":
                arr[i]["qname"] = v + bytes(256 - len(v))
                arr[i]["qname_len"] = len(v)
            elif k in ("caddr", "saddr"):
                arr[i][k] = v + bytes(16 - len(v))
            else:
                arr[i][k] = v
    return arr


def test_aggregate_counts_latency_and_tags():
    www = b"\x03www\x04test\x00"
    base = dict(caddr=IP1, saddr=IP2, cport=45000, sport=53, family=4, proto=17, qname=www)
    rows = [dict(base, rcode=0, latency_ns=100), dict(base, rcode=0, latency_ns=301),
            dict(base, rcode=3, latency_ns=50), dict(base, rcode=-1, latency_ns=0),
            dict(base, proto=6, rcode=0, latency_ns=7),
            # this host answered: src is the server, the client's port is ephemeral
            dict(base, caddr=IP3, saddr=IP1, rcode=0, latency_ns=9),
            dict(base, cport=1000, rcode=0, latency_ns=5)]
    b = finish(partial(pairs(rows), 32768, LOCAL_KEYS))
    assert set(DNSFLOW_TAGS + DNSFLOW_FIELDS) <= set(b.schema.names)
    got = {(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["transport"], r["direction"],
            r["rcode"]): (r["count"], r["latency"], r["latency_max"]) for r in b.to_pylist()}
    assert set(b.column("forwarded").to_pylist()) == {"false"}
    assert got == {
        ("10.0.0.1", "*", "10.0.0.2", "53", "udp", "outgoing", 0): (2, 200, 301),
        ("10.0.0.1", "*", "10.0.0.2", "53", "udp", "outgoing", 3): (1, 50, 50),
        ("10.0.0.1", "*", "10.0.0.2", "53", "udp", "outgoing", -1): (1, 0, 0),
        ("10.0.0.1", "*", "10.0.0.2", "53", "tcp", "outgoing", 0): (1, 7, 7),
        ("10.0.0.1", "53", "10.0.0.3", "*", "udp", "incoming", 0): (1, 9, 9),
        ("10.0.0.1", "1000", "10.0.0.2", "53", "udp", "outgoing", 0): (1, 5, 5),
    }
    assert set(b.column("dst_domain").to_pylist()) == {"www.test"}
    assert set(b.column("family").to_pylist()) == {"IPv4"}
    assert set(b.column("src_ip_type").to_pylist()) == {"private"}
    for f in DNSFLOW_FIELDS:
        assert b.schema.field(f).type == pa.int64()


def test_plugin_sets_the_shared_cache():
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.dnsflow import DnsflowPlugin
    cfg = types.SimpleNamespace(interval=10.0, ephemeral_port=32768, host_proc="/proc")
    ctx = PluginContext(cfg=cfg, logger=None, self_pid=1)
    p = DnsflowPlugin(ctx)
    assert ctx.domains is p.cache and p.collect(0) == []


ROW = st.fixed_dictionaries(dict(
    caddr=st.sampled_from([IP1, IP3]), saddr=st.just(IP2), cport=st.sampled_from([1000, 45000, 45001]),
    sport=st.just(53), family=st.just(4), proto=st.sampled_from([6, 17]),
    qname=st.sampled_from([b"\x01a\x04test\x00", b"\x01b\x04test\x00"]), rcode=st.sampled_from([-1, 0, 3]),
    latency_ns=st.integers(0, 10**9)))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(ROW, min_size=1, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_steps_add_up_to_one_aggregate(rows, cuts):
    """Folding exchanges in steps (partial, combine) gives the points one
    pass over all of them gives."""
    # distinct DNS ids: no forwarded copy to merge across steps
    arr = pairs([dict(r, id=i) for i, r in enumerate(rows)])
    bounds = sorted({0, len(arr), *[min(c, len(arr)) for c in cuts]})
    parts = [partial(arr[a:b], 32768, LOCAL_KEYS) for a, b in zip(bounds, bounds[1:]) if b > a]
    whole = finish(partial(arr, 32768, LOCAL_KEYS)).to_pylist()
    stepped = finish(combine(parts)).to_pylist()
    assert sorted(map(repr, stepped)) == sorted(map(repr, whole))


def dns_packets(n, names):
    """n query/answer packets (UDP, 10.0.0.1:40000+i -> 10.0.0.2:53), as
    the packet ring hands them over."""
    out = []
    for i in range(n):
        name = names[i % len(names)]
        qname = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\x00"
        q = struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"
        a = struct.pack("!HHHHHH", i, 0x8180, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"
        for sport, dport, src, dst, body in ((40000 + i, 53, IP1, IP2, q), (53, 40000 + i, IP2, IP1, a)):
            l4 = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
            out.append(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, 17, 0, src, dst) + l4)
    data = b"".join(out)
    offs = np.cumsum([0] + [len(p) for p in out[:-1]])
    pkts, payload, _ = _packets.decode_packets(data, offs, [len(p) for p in out], [0x0800] * len(out))
    pkts["ts_ns"] = np.arange(len(pkts)) * 1000
    return pkts, payload


class FakeRing:
    """Hands over prepared batches of packets, one per read()."""

    def __init__(self, batches):
        self.batches = list(batches)

    def read(self, max_blocks=8):
        pkts, payload = self.batches.pop(0)
        return pkts, payload, False


def dnsflow_plugin():
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.dnsflow import DnsflowPlugin
    cfg = types.SimpleNamespace(interval=60.0, ephemeral_port=32768, host_proc="/proc")
    return DnsflowPlugin(PluginContext(cfg=cfg, logger=None, self_pid=1))


def test_finished_exchanges_are_folded_as_they_complete(monkeypatch):
    """The plugin never holds more than a step of finished exchanges,
    however long the interval; the interval's points count every one."""
    from dkebpf.plugins import dnsflow
    monkeypatch.setattr(dnsflow, "STEP_PAIRS", 10)
    p = dnsflow_plugin()
    p.ring = FakeRing(dns_packets(12, [b"a.test", b"b.test"]) for _ in range(5))
    for _ in range(5):
        p.on_readable(p.ring)
        assert p.table.finished < 10
    assert p.totals["early_steps"] == 5
    p.ring = None
    points = p.collect(0)[0].batch.to_pylist()
    assert sorted((r["dst_domain"], r["count"]) for r in points) == [("a.test", 30), ("b.test", 30)]


def test_points_per_interval_are_bounded_and_what_does_not_fit_is_counted(monkeypatch):
    from dkebpf.plugins import dnsflow
    monkeypatch.setattr(dnsflow, "STEP_PAIRS", 4)
    monkeypatch.setattr(dnsflow, "MAX_KEYS", 3)
    p = dnsflow_plugin()
    p.ring = FakeRing([dns_packets(4, [b"a.test", b"b.test"]), dns_packets(4, [b"c.test", b"d.test"]),
                       dns_packets(4, [b"a.test"])])
    for _ in range(3):
        p.on_readable(p.ring)
    p.ring = None
    points = p.collect(0)[0].batch.to_pylist()
    assert sorted((r["dst_domain"], r["count"]) for r in points) == [("a.test", 6), ("b.test", 2)]
    assert p.counters()["exchanges_lost_points_full"] == 4


def test_merged_rings_pair_in_capture_order_and_hold_what_may_have_older_company():
    """Answers read from the receive ring before their queries come from a
    transmit ring: held while older packets may still be unread (the
    watermark), then paired with the queries in capture order: every
    exchange once, none unmatched."""
    from dkebpf import _dns
    p = dnsflow_plugin()
    pkts, payload = dns_packets(6, [b"a.test", b"b.test"])   # query i at 2000 i ns, its answer 1000 ns later
    msgs, addrs, _ = _dns.parse_packets(pkts, payload)
    queries, answers = msgs[msgs["qr"] == 0], msgs[msgs["qr"] == 1]
    none = np.empty(0, _dns.ADDR_DTYPE)
    p._release([(answers, none)], watermark=0)       # a query may still wait in its ring
    assert len(p.held[0]) == 6 and p.table.answers == 0
    p._release([(queries[:3], none)], watermark=int(queries["ts_ns"][3]))
    assert p.table.paired == 3 and p.table.unmatched == 0 and len(p.held[0]) == 3
    p._release([(queries[3:], none)], watermark=1 << 62)
    assert p.held is None
    assert (p.table.paired, p.table.unmatched, p.table.duplicates) == (6, 0, 0)
    points = p.collect(0)[0].batch.to_pylist()
    assert sorted((r["dst_domain"], r["count"], r["rcode"]) for r in points) == [("a.test", 3, 0), ("b.test", 3, 0)]


EXCHANGE = st.fixed_dictionaries(dict(
    ts_ns=st.integers(0, 10**6), id=st.sampled_from([7, 8]), family=st.just(4), proto=st.sampled_from([6, 17]),
    caddr=st.sampled_from([IP1, IP2, IP3]), cport=st.sampled_from([45000, 45001]),
    saddr=st.sampled_from([IP1, IP2, IP3]), sport=st.just(53), rcode=st.sampled_from([0, 3]),
    latency_ns=st.integers(0, 1000), qname=st.just(b"\x01a\x04test\x00")))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(EXCHANGE, min_size=1, max_size=30))
def test_direction_forwarded_and_dnat_copies_follow_the_reference(rows):
    """Who asked and who answered comes from this host's addresses (IP1),
    not from the packet type; exchanges between two other hosts are
    forwarded, reported once per DNS id + transport + client ip:port (a
    DNATed query's two copies), as tests/reference/dns_ref.classify says."""
    rows = [dict(r, caddr=r["caddr"] + bytes(12), saddr=r["saddr"] + bytes(12)) for r in rows]
    want = {}
    for p, direction, forwarded in ref.classify(rows, LOCAL):
        server = ("10.0.0." + str(p["saddr"][3]), str(p["sport"]))
        client = ("10.0.0." + str(p["caddr"][3]), "*")     # ephemeral cport
        src, dst = (server, client) if direction == "incoming" else (client, server)
        key = (*src, *dst, {6: "tcp", 17: "udp"}[p["proto"]], direction, "true" if forwarded else "false",
               p["rcode"])
        want[key] = want.get(key, 0) + 1
    b = finish(partial(pairs(rows), 32768, LOCAL_KEYS))
    got = {(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["transport"], r["direction"],
            r["forwarded"], r["rcode"]): r["count"] for r in b.to_pylist()}
    assert got == want


def test_dnat_copies_of_one_forwarded_query_are_one_point():
    """A pod (IP2) asks a service address (IP3); the host DNATs it to the
    server (10.0.0.4): paired twice, reported once, as the client asked."""
    base = dict(id=77, family=4, proto=17, caddr=IP2, cport=45000, sport=53, rcode=0, latency_ns=10,
                qname=b"\x01a\x04test\x00")
    rows = [dict(base, ts_ns=1, saddr=IP3), dict(base, ts_ns=2, saddr=bytes([10, 0, 0, 4]))]
    got = finish(partial(pairs(rows), 32768, LOCAL_KEYS)).to_pylist()
    assert [(r["src_ip"], r["dst_ip"], r["direction"], r["forwarded"], r["count"]) for r in got] == [
        ("10.0.0.2", "10.0.0.3", "outgoing", "true", 1)]

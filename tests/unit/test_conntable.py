"""dkebpf._conntable.merge against the pure-Python reference, plus the
exactly-once invariant over simulated kernel histories and the edge cases."""
import random
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkebpf._conntable import DELTA_DTYPE, DELTA_SCHEMA, delta_to_arrow, merge
from dkebpf._records import EVENT_DTYPE, F_CLOSED, F_ESTABLISHED, KEY_DTYPE, STATS_DTYPE
from reference import conntable_ref as ref

COUNTERS = ("bytes_sent", "bytes_recv", "retransmits")
V4 = bytes([127, 0, 0, 1]) + bytes(12)
V4B = bytes([10, 0, 0, 2]) + bytes(12)
V6 = bytes(range(1, 17))


# ------------------------------------------------------------ builders

def stats_row(ts_first=1, ts_last=None, sent=0, recv=0, retr=0, flags=0, pid=1,
              comm=b"curl", lport=40000, laddr=V4, family=4, proto=6, direction=1,
              rtt=100, rtt_var=10):
    return dict(ts_first=ts_first, ts_last=ts_first if ts_last is None else ts_last,
                bytes_sent=sent, bytes_recv=recv, retransmits=retr, flags=flags, pid=pid,
                comm=comm, lport=lport, laddr=laddr, family=family, proto=proto,
                direction=direction, rtt_us=rtt, rtt_var_us=rtt_var)


def make(rows):
    """[(key tuple (sk, raddr, rport), stats dict)] -> (keys, stats); padding zeroed
    as the kernel does (get_conn memsets the key)."""
    keys = np.zeros(len(rows), KEY_DTYPE)
    stats = np.zeros(len(rows), STATS_DTYPE)
    for i, ((sk, raddr, rport), s) in enumerate(rows):
        keys[i] = (sk, raddr, rport)
        for name, v in s.items():
            stats[i][name] = v
    return keys, stats


def make_closed(rows):
    keys, stats = make(rows)
    ev = np.zeros(len(rows), EVENT_DTYPE)
    ev["key"] = keys
    ev["stats"] = stats
    ev["stats"]["flags"] |= F_CLOSED
    return ev


EMPTY_K, EMPTY_S = make([])
EMPTY_X = make_closed([])


def run(prev, cur, closed, idle_before=0):
    """Run both merges; assert they agree; return the Cython result."""
    out = merge(prev[0], prev[1], cur[0], cur[1], closed, idle_before)
    exp = ref.merge(prev[0], prev[1], cur[0], cur[1], closed, idle_before)
    assert_same(out, exp)
    return out


# ------------------------------------------------------- canonical forms

def canon_delta(delta):
    names = DELTA_DTYPE.names
    if isinstance(delta, np.ndarray):
        return sorted(delta.tolist())
    return sorted(tuple(d[n] for n in names) for d in delta)


def canon_snapshot(keys, stats):
    return sorted(zip(keys.tolist(), stats.tolist()))


def assert_same(out, exp):
    delta, nk, ns, idle = out
    assert delta.dtype == DELTA_DTYPE and nk.dtype == KEY_DTYPE
    assert ns.dtype == STATS_DTYPE and idle.dtype == KEY_DTYPE
    assert canon_delta(delta) == canon_delta(exp[0])
    assert canon_snapshot(nk, ns) == canon_snapshot(exp[1], exp[2])
    assert sorted(idle.tolist()) == sorted(exp[3].tolist())
    # raw key bytes (padding included) survive: the caller deletes by them
    assert sorted(k.tobytes() for k in nk) == sorted(k.tobytes() for k in exp[1])
    assert sorted(k.tobytes() for k in idle) == sorted(k.tobytes() for k in exp[3])


def rawcopy(a):
    """Copy with the padding bytes (numpy's copy and fancy indexing copy only
    the named fields of a structured array)."""
    return np.frombuffer(bytearray(a.tobytes()), a.dtype)


def snapshot_order(keys, stats):
    """The documented snapshot order: sk, raddr as two native u64, rport, ts_first."""
    r = np.ascontiguousarray(keys["raddr"]).view(np.uint64).reshape(-1, 2)
    return list(zip(keys["sk"].tolist(), r[:, 0].tolist(), r[:, 1].tolist(),
                    keys["rport"].tolist(), stats["ts_first"].tolist()))


# ------------------------------------------------------------ edge cases

def test_empty_inputs():
    delta, nk, ns, idle = run((EMPTY_K, EMPTY_S), (EMPTY_K, EMPTY_S), EMPTY_X, 10**18)
    assert len(delta) == len(nk) == len(ns) == len(idle) == 0
    batch = delta_to_arrow(delta)
    assert batch.schema == DELTA_SCHEMA and batch.num_rows == 0


def test_only_closed():
    closed = make_closed([
        ((0x1000, V4, 80), stats_row(ts_first=5, sent=10, recv=20, retr=1, flags=F_ESTABLISHED, pid=7)),
        ((0x2000, V6, 443), stats_row(ts_first=6, recv=3, pid=8, family=6)),
    ])
    delta, nk, ns, idle = run((EMPTY_K, EMPTY_S), (EMPTY_K, EMPTY_S), closed)
    rows = {r["pid"]: r for r in (dict(zip(DELTA_DTYPE.names, t)) for t in delta.tolist())}
    assert rows[7]["d_bytes_sent"] == 10 and rows[7]["d_bytes_recv"] == 20
    assert rows[7]["d_retransmits"] == 1
    assert rows[7]["established"] == 1 and rows[7]["closed"] == 1
    assert rows[8]["established"] == 0 and rows[8]["closed"] == 1 and rows[8]["family"] == 6
    assert rows[8]["raddr"] == V6 and rows[8]["rport"] == 443
    assert len(nk) == len(ns) == len(idle) == 0


def test_opened_and_closed_inside_one_interval():
    key = (0x1000, V4, 80)
    final = stats_row(ts_first=100, ts_last=180, sent=500, recv=7000, flags=F_ESTABLISHED)
    # never dumped: counted in full, once
    delta, nk, _, _ = run((EMPTY_K, EMPTY_S), (EMPTY_K, EMPTY_S), make_closed([(key, final)]))
    assert len(delta) == 1 and len(nk) == 0
    d = delta[0]
    assert (d["d_bytes_sent"], d["d_bytes_recv"], d["established"], d["closed"]) == (500, 7000, 1, 1)
    # dumped partially, closed before the drain: the closed record wins
    partial = stats_row(ts_first=100, ts_last=150, sent=200, recv=100, flags=F_ESTABLISHED)
    delta, nk, _, _ = run((EMPTY_K, EMPTY_S), make([(key, partial)]), make_closed([(key, final)]))
    assert len(delta) == 1 and len(nk) == 0
    d = delta[0]
    assert (d["d_bytes_sent"], d["d_bytes_recv"], d["established"], d["closed"]) == (500, 7000, 1, 1)


def test_closed_after_prev_and_socket_reused():
    key = (0x1000, V4, 80)
    prev = make([(key, stats_row(ts_first=10, ts_last=20, sent=100, recv=50, flags=F_ESTABLISHED, pid=1))])
    closed = make_closed([(key, stats_row(ts_first=10, ts_last=30, sent=150, recv=80,
                                          flags=F_ESTABLISHED, pid=1))])
    # the kernel reused the socket address for a new connection to the same peer
    cur = make([(key, stats_row(ts_first=40, ts_last=45, sent=5, flags=F_ESTABLISHED, pid=2))])
    delta, nk, ns, idle = run(prev, cur, closed)
    rows = {r[5]: r for r in delta.tolist()}  # by pid
    old, new = rows[1], rows[2]
    assert old[:3] == (50, 30, 0) and old[13] == 0 and old[14] == 1  # established, closed
    assert new[:3] == (5, 0, 0) and new[13] == 1 and new[14] == 0
    assert ns["ts_first"].tolist() == [40] and len(idle) == 0


def test_several_closed_instances_of_one_key():
    key = (0x1000, V4, 53)
    closed = make_closed([(key, stats_row(ts_first=t, sent=t, flags=F_ESTABLISHED, pid=t))
                          for t in (30, 10, 20)])
    delta, _, _, _ = run((EMPTY_K, EMPTY_S), (EMPTY_K, EMPTY_S), closed)
    assert sorted(delta["d_bytes_sent"].tolist()) == [10, 20, 30]
    assert delta["closed"].tolist() == [1, 1, 1]


def test_unchanged_instance_emits_nothing():
    key = (0x1000, V4, 80)
    s = stats_row(ts_first=10, ts_last=20, sent=100, flags=F_ESTABLISHED)
    delta, nk, ns, idle = run(make([(key, s)]), make([(key, s)]), EMPTY_X, idle_before=5)
    assert len(delta) == 0 and len(nk) == 1 and len(idle) == 0


def test_idle_instance_is_returned_and_kept_as_base():
    key = (0x1000, V4, 5353)
    s = stats_row(ts_first=10, ts_last=20, sent=100, proto=17)
    # ts_last == idle_before is not older than it
    delta, nk, _, idle = run(make([(key, s)]), make([(key, s)]), EMPTY_X, idle_before=20)
    assert len(nk) == 1 and len(idle) == 0
    # idle: returned to be taken out of the map, and kept in the snapshot as
    # the base of its final record, which comes back as a closed one
    delta, nk, ns, idle = run(make([(key, s)]), make([(key, s)]), EMPTY_X, idle_before=21)
    assert len(delta) == 0 and idle.tolist() == [(0x1000, V4, 5353)]
    assert nk.tolist() == [(0x1000, V4, 5353)] and ns["bytes_sent"].tolist() == [100]
    # new in this dump: never idle, whatever its age
    delta, nk, _, idle = run((EMPTY_K, EMPTY_S), make([(key, s)]), EMPTY_X, idle_before=10**9)
    assert len(nk) == 1 and len(idle) == 0 and len(delta) == 1
    # retransmits do not move ts_last (tcp_retransmit_skb): idle, yet counted
    s2 = dict(s, retransmits=3)
    delta, nk, _, idle = run(make([(key, s)]), make([(key, s2)]), EMPTY_X, idle_before=21)
    assert len(nk) == 1 and len(idle) == 1 and delta["d_retransmits"].tolist() == [3]
    # a closed instance is never idle: its key may already belong to another
    delta, nk, _, idle = run(make([(key, s)]), make([(key, s)]), make_closed([(key, s)]), 21)
    assert len(idle) == 0 and len(nk) == 0 and len(delta) == 0


def test_evicted_flow_counts_what_moved_between_dump_and_take():
    """The final record of an idle UDP flow, taken out of the map after the
    dump, comes back as a closed record: the bytes of a datagram in between
    are counted, once; nothing moved, nothing is reported."""
    key = (0x1000, V4, 5353)
    s = stats_row(ts_first=10, ts_last=20, sent=100, recv=50, proto=17)
    _, nk, ns, idle = run(make([(key, s)]), make([(key, s)]), EMPTY_X, idle_before=21)
    assert len(idle) == 1
    late = dict(s, ts_last=40, bytes_recv=80)  # one more datagram before the take
    delta, nk2, _, idle2 = run((nk, ns), (EMPTY_K, EMPTY_S), make_closed([(key, late)]))
    assert delta[["d_bytes_sent", "d_bytes_recv"]].tolist() == [(0, 30)]
    assert len(nk2) == 0 and len(idle2) == 0
    delta, nk2, _, _ = run((nk, ns), (EMPTY_K, EMPTY_S), make_closed([(key, s)]))
    assert len(delta) == 0 and len(nk2) == 0


def test_tcp_flow_is_never_idle_and_closes_once():
    """A TCP connection idle for longer than any threshold stays in the map
    and in the snapshot; its close, however late, is one closed row. A
    connect that never completed and moved nothing is evicted and adds
    nothing."""
    key = (0x2000, V4, 5432)
    s = stats_row(ts_first=10, ts_last=20, sent=300, recv=900, flags=F_ESTABLISHED)
    prev = make([(key, s)])
    for _ in range(3):
        delta, nk, ns, idle = run(prev, make([(key, s)]), EMPTY_X, idle_before=10**12)
        assert len(delta) == 0 and len(idle) == 0 and len(nk) == 1
        prev = (nk, ns)
    delta, nk, _, _ = run(prev, (EMPTY_K, EMPTY_S), make_closed([(key, dict(s, ts_last=10**13))]))
    assert delta[["d_bytes_sent", "d_bytes_recv", "closed", "established"]].tolist() == [(0, 0, 1, 0)]
    assert len(nk) == 0
    failed = stats_row(ts_first=10, ts_last=20)  # SYN_SENT, no handshake, no bytes
    _, nk, ns, idle = run(make([(key, failed)]), make([(key, failed)]), EMPTY_X, idle_before=21)
    assert len(idle) == 1
    delta, _, _, _ = run((nk, ns), (EMPTY_K, EMPTY_S), make_closed([(key, failed)]))
    assert len(delta) == 0


def test_counters_going_backwards_count_as_new_instance():
    key = (0x1000, V4, 80)
    prev = make([(key, stats_row(ts_first=10, sent=100, recv=100, flags=F_ESTABLISHED))])
    cur = make([(key, stats_row(ts_first=10, ts_last=30, sent=40, recv=200, flags=F_ESTABLISHED))])
    delta, _, _, _ = run(prev, cur, EMPTY_X)
    assert delta[["d_bytes_sent", "d_bytes_recv"]].tolist() == [(40, 200)]
    assert delta["established"].tolist() == [1]


def test_established_counted_once_when_handshake_completes_later():
    key = (0x1000, V4, 80)
    syn_sent = stats_row(ts_first=10, ts_last=10)
    est = stats_row(ts_first=10, ts_last=20, flags=F_ESTABLISHED)
    d1, nk, ns, _ = run((EMPTY_K, EMPTY_S), make([(key, syn_sent)]), EMPTY_X)
    assert len(d1) == 0 and len(nk) == 1
    d2, nk, ns, _ = run((nk, ns), make([(key, est)]), EMPTY_X)
    assert d2["established"].tolist() == [1]
    d3, _, _, _ = run((nk, ns), make([(key, dict(est, bytes_sent=5))]), EMPTY_X)
    assert d3["established"].tolist() == [0]


def test_descriptive_fields_come_from_the_newest_record():
    key = (0x1000, V4B, 8080)
    prev = make([(key, stats_row(ts_first=1, sent=1, rtt=500, pid=0, comm=b""))])
    cur = make([(key, stats_row(ts_first=1, ts_last=9, sent=4, rtt=90, rtt_var=7, pid=42,
                                comm=b"nginx", lport=8080, direction=2, proto=6))])
    delta, _, _, _ = run(prev, cur, EMPTY_X)
    r = dict(zip(DELTA_DTYPE.names, delta.tolist()[0]))
    assert (r["pid"], r["comm"], r["rtt_us"], r["rtt_var_us"]) == (42, b"nginx", 90, 7)
    assert (r["lport"], r["rport"], r["raddr"], r["laddr"], r["direction"]) == (8080, 8080, V4B, V4, 2)


def test_unsorted_prev_and_padding_preserved():
    rows = [((sk, V4, 80), stats_row(ts_first=sk, sent=sk)) for sk in (5, 3, 9, 1)]
    keys, stats = make(rows)
    raw = keys.view(np.uint8).reshape(len(keys), -1)
    raw[:, -6:] = 0xAB  # key padding: the kernel compares map keys bytewise
    cur_k, cur_s = rawcopy(keys), rawcopy(stats)
    cur_s["bytes_sent"] += 1
    cur_s["ts_last"] += 1
    delta, nk, ns, idle = run((keys, stats), (cur_k, cur_s), EMPTY_X)
    assert delta["d_bytes_sent"].tolist() == [1, 1, 1, 1]
    assert nk["sk"].tolist() == [1, 3, 5, 9]
    assert all(k.tobytes()[-6:] == b"\xab" * 6 for k in nk)
    # strided inputs are copied whole rows, padding included
    def strided(a):
        big = np.zeros(2 * len(a), a.dtype)
        void = np.dtype((np.void, a.dtype.itemsize))
        big.view(void)[::2] = a.view(void)
        return big[::2]
    sk_, ss_ = strided(cur_k), strided(cur_s)
    assert not sk_.flags.c_contiguous
    _, nk2, _, _ = run((keys, stats), (sk_, ss_), EMPTY_X)
    assert all(k.tobytes()[-6:] == b"\xab" * 6 for k in nk2)


def test_inputs_not_modified():
    rows = [((sk % 7, V4, sk % 3), stats_row(ts_first=sk, sent=sk)) for sk in range(200)]
    keys, stats = make(rows)
    closed = make_closed(rows[:20])
    copies = [rawcopy(a) for a in (keys, stats, closed)]
    merge(keys, stats, keys[::-1].copy(), stats[::-1].copy(), closed, 10)
    for a, b in zip((keys, stats, closed), copies):
        assert a.tobytes() == b.tobytes()


def test_bad_inputs():
    with pytest.raises(TypeError):
        merge(EMPTY_S, EMPTY_S, EMPTY_K, EMPTY_S, EMPTY_X, 0)
    with pytest.raises(TypeError):
        merge([], EMPTY_S, EMPTY_K, EMPTY_S, EMPTY_X, 0)
    with pytest.raises(ValueError):
        merge(EMPTY_K, EMPTY_S, make([((1, V4, 1), stats_row())])[0], EMPTY_S, EMPTY_X, 0)
    with pytest.raises(TypeError):
        delta_to_arrow(EMPTY_K)


def test_idle_threshold_extremes():
    key = (0x1000, V4, 80)
    s = stats_row(ts_first=10, ts_last=2**63)
    assert len(merge(*make([(key, s)]), *make([(key, s)]), EMPTY_X, -5)[3]) == 0
    assert len(merge(*make([(key, s)]), *make([(key, s)]), EMPTY_X, 2**70)[3]) == 1


def test_large_unordered_dump_matches_reference():
    """Big enough for the radix path; many keys share a socket (unconnected
    UDP with many peers), sockets look like slab pointers."""
    rnd = random.Random(7)
    socks = [0xFFFF888100000000 + rnd.randrange(1 << 24) * 0x900 for _ in range(1500)]
    rows, seen = [], set()
    for i in range(6000):
        sk = rnd.choice(socks[:20]) if i % 3 == 0 else rnd.choice(socks)
        key = (sk, rnd.choice([V4, V4B, V6]), rnd.randrange(4))
        if key in seen:
            continue
        seen.add(key)
        rows.append((key, stats_row(ts_first=rnd.randrange(1, 1000), ts_last=2000,
                                    sent=rnd.randrange(100), recv=rnd.randrange(100),
                                    flags=rnd.choice([0, F_ESTABLISHED]), pid=i, proto=rnd.choice([6, 17]))))
    keys, stats = make(rows)
    nk, ns = merge(EMPTY_K, EMPTY_S, keys, stats, EMPTY_X, 0)[1:3]
    order = snapshot_order(nk, ns)
    assert order == sorted(order) and len(nk) == len(rows)
    # next interval: dump in another order, some changed, some closed, some idle
    perm = np.array(rnd.sample(range(len(rows)), len(rows)))
    ck, cs = keys[perm].copy(), stats[perm].copy()
    changed = np.array(rnd.sample(range(len(rows)), len(rows) // 2))
    cs["bytes_sent"][changed] += 7
    cs["ts_last"][changed] = 3000
    closed_idx = rnd.sample(range(len(rows)), 300)
    ev = np.zeros(300, EVENT_DTYPE)
    ev["key"], ev["stats"] = ck[closed_idx], cs[closed_idx]
    ev["stats"]["bytes_recv"] += 1
    ev["stats"]["flags"] |= F_CLOSED
    out = run((nk, ns), (ck, cs), ev, idle_before=2500)
    assert len(out[3]) > 0 and len(out[0]) > 0


def test_concurrent_merges_agree():
    """merge releases the GIL and reuses a scratch buffer: calls from several
    threads at once must not share it."""
    from concurrent.futures import ThreadPoolExecutor
    rnd = random.Random(3)
    rows = [((rnd.randrange(1 << 40), V4, rnd.randrange(100)),
             stats_row(ts_first=i + 1, sent=i, pid=i)) for i in range(20000)]
    keys, stats = make(rows)
    expect = canon_delta(merge(EMPTY_K, EMPTY_S, keys, stats, EMPTY_X, 0)[0])
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: merge(EMPTY_K, EMPTY_S, keys, stats, EMPTY_X, 0)[0],
                              range(16)))
    assert all(canon_delta(r) == expect for r in results)


def test_delta_to_arrow():
    key = (0x1000, V4, 80)
    cur = make([
        (key, stats_row(ts_first=1, sent=10, recv=20, retr=2, pid=42, comm=b"nginx", lport=8080,
                        flags=F_ESTABLISHED, rtt=123, rtt_var=45)),
        ((0x2000, V6, 53), stats_row(ts_first=2, recv=3, pid=43, comm=b"caf\xc3\xa9\xff\xe2\x82",
                                     family=6, proto=17, direction=2)),
        ((0x3000, V4B, 1), stats_row(ts_first=3, sent=1, comm=b"x" * 16)),
    ])
    delta, _, _, _ = merge(EMPTY_K, EMPTY_S, *cur, EMPTY_X, 0)
    batch = delta_to_arrow(delta)
    batch.validate(full=True)
    assert batch.schema == DELTA_SCHEMA
    rows = {r["pid"]: r for r in batch.to_pylist()}
    r = rows[42]
    assert r["comm"] == "nginx" and r["laddr"] == V4 and r["raddr"] == V4 and r["lport"] == 8080
    assert (r["bytes_sent"], r["bytes_recv"], r["retransmits"]) == (10, 20, 2)
    assert (r["rtt_us"], r["rtt_var_us"], r["established"], r["closed"]) == (123, 45, 1, 0)
    r = rows[43]
    assert r["comm"] == "café\ufffd\ufffd" and r["raddr"] == V6 and r["proto"] == 17 and r["family"] == 6
    assert rows[1]["comm"] == "x" * 16
    for name, typ in zip(DELTA_SCHEMA.names, DELTA_SCHEMA.types):
        assert batch.column(name).type == typ
    # columns equal the numpy rows
    assert batch.column("bytes_sent").to_numpy().tolist() == delta["d_bytes_sent"].tolist()
    assert batch.column("pid").to_numpy().tolist() == delta["pid"].tolist()


# --------------------------------------------------- simulated kernel

SOCKS = (0x1000, 0x2000, 0x3000)
PEERS = ((V4, 80), (V4, 53), (V6, 53))
KEYS = [(sk, raddr, rport) for sk in SOCKS for raddr, rport in PEERS]


class Kernel:
    """A model of bpf/netflow.bpf.c's `conns` map and `closed` ring."""

    def __init__(self):
        self.live = {}  # key -> stats dict
        self.ring = []
        self.clock = 1
        self.serial = 0
        self.final = {}  # pid (instance serial) -> final counters (closed or still live)

    def get(self, key):
        if key not in self.live:  # get_conn: created on first sight
            self.serial += 1
            self.live[key] = stats_row(ts_first=self.clock, pid=self.serial,
                                       comm=b"p%d" % (self.serial % 3), lport=1000 + self.serial,
                                       proto=17 if key[2] == 53 else 6,
                                       family=6 if key[1] == V6 else 4)
        return self.live[key]

    def apply(self, op):
        kind, ki, amount, dt = op
        self.clock += dt
        key = KEYS[ki]
        if kind == "send":
            s = self.get(key)
            s["bytes_sent"] += amount
            s["ts_last"] = self.clock
        elif kind == "recv":
            s = self.get(key)
            s["bytes_recv"] += amount
            s["ts_last"] = self.clock
            s["rtt_us"] = amount
        elif kind == "retrans":  # tcp_retransmit_skb does not touch ts_last
            self.get(key)["retransmits"] += amount % 3 + 1
        elif kind == "establish":
            s = self.get(key)
            s["flags"] |= F_ESTABLISHED
            s["ts_last"] = self.clock
        elif kind == "close" and key in self.live:
            s = self.live.pop(key)
            s["ts_last"] = self.clock
            if s["flags"] & F_ESTABLISHED or s["bytes_sent"] or s["bytes_recv"]:
                self.ring.append((key, dict(s, flags=s["flags"] | F_CLOSED)))
                self.final[s["pid"]] = s

    def dump(self, rnd):
        rows = [(k, dict(s)) for k, s in self.live.items()]
        rnd.shuffle(rows)  # hash-map order
        return make(rows)

    def drain(self):
        ring, self.ring = self.ring, []
        return make_closed(ring)

    def take(self, keys):
        """The collector takes idle flows out (lookup and delete): their
        final records, handed back to the next merge as closed ones."""
        rows = []
        for k in keys.tolist():
            s = self.live.pop(tuple(k), None)
            if s is not None:
                rows.append((tuple(k), s))
                self.final[s["pid"]] = s
        ev = make_closed(rows)
        ev["stats"]["flags"] &= 0xFF ^ F_CLOSED  # map records, not ring records
        return ev


op_st = st.tuples(
    st.sampled_from(["send", "recv", "retrans", "establish", "close", "close"]),
    st.integers(0, len(KEYS) - 1), st.integers(1, 1000), st.integers(1, 4))
interval_st = st.tuples(st.lists(op_st, max_size=14), st.lists(op_st, max_size=6),
                        st.integers(0, 40))
history_st = st.lists(interval_st, min_size=1, max_size=8)


def counters(s):
    return tuple(int(s[c]) for c in COUNTERS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=history_st, rnd=st.randoms(use_true_random=False))
def test_simulated_history(history, rnd):
    k = Kernel()
    prev_cy = prev_ref = (EMPTY_K, EMPTY_S)
    observed = {}  # pid -> (counters, flags, closed) of the last record user space saw
    sums = defaultdict(lambda: [0, 0, 0, 0, 0])  # pid -> deltas, established, closed
    taken = EMPTY_X
    # a last interval without activity shows the final state of live instances
    for phase_a, phase_b, timeout in history + [([], [], 10**9), ([], [], 10**9)]:
        for op in phase_a:
            k.apply(op)
        cur = k.dump(rnd)  # the map is dumped first ...
        for op in phase_b:
            k.apply(op)
        closed = np.frombuffer(k.drain().tobytes() + taken.tobytes(), EVENT_DTYPE)  # ... then the ring
        for s in cur[1].tolist() + closed["stats"].tolist():
            s = dict(zip(STATS_DTYPE.names, s))
            observed[s["pid"]] = (counters(s), s["flags"], s["proto"])
        idle_before = k.clock - timeout

        out = merge(*prev_cy, *cur, closed, idle_before)
        exp = ref.merge(*prev_ref, *cur, closed, idle_before)
        assert_same(out, exp)
        order = snapshot_order(out[1], out[2])
        assert order == sorted(order)
        prev_cy, prev_ref = out[1:3], exp[1:3]

        for r in out[0].tolist():
            r = dict(zip(DELTA_DTYPE.names, r))
            acc = sums[r["pid"]]
            acc[0] += r["d_bytes_sent"]
            acc[1] += r["d_bytes_recv"]
            acc[2] += r["d_retransmits"]
            acc[3] += r["established"]
            acc[4] += r["closed"]
        taken = k.take(out[3])  # after the merge: a datagram may come in between
        for op in phase_b[:1]:
            k.apply(op)

    # exactly once: per instance, the deltas add up to the last record seen
    assert set(sums) <= set(observed)
    for pid, (cnt, flags, proto) in observed.items():
        acc = sums[pid]
        assert tuple(acc[:3]) == cnt, pid
        assert acc[3] == (1 if flags & F_ESTABLISHED else 0), pid
        # tcp_closed: TCP only
        assert acc[4] == (1 if flags & F_CLOSED and proto == 6 else 0), pid
    # ... which is the true final count of every closed or still live instance
    for pid, s in list(k.final.items()) + [(s["pid"], s) for s in k.live.values()]:
        assert tuple(sums[pid][:3]) == counters(s), pid


# ------------------------------------------------ arbitrary raw inputs

raw_row = st.tuples(
    st.sampled_from(SOCKS[:2]), st.sampled_from(PEERS[:2]), st.integers(1, 3),  # key, ts_first
    st.integers(1, 6), st.integers(0, 3), st.integers(0, 3), st.integers(0, 2),  # ts_last, counters
    st.sampled_from([0, F_ESTABLISHED]), st.integers(0, 5))  # flags, pid


def raw_arrays(rows, closed=False):
    out = [((sk, peer[0], peer[1]), stats_row(ts_first=tf, ts_last=max(tf, tl), sent=a, recv=b,
                                              retr=c, flags=fl, pid=pid))
           for sk, peer, tf, tl, a, b, c, fl, pid in rows]
    return make_closed(out) if closed else make(out)


@settings(max_examples=600, deadline=None)
@given(prev=st.lists(raw_row, max_size=10), cur=st.lists(raw_row, max_size=10),
       closed=st.lists(raw_row, max_size=6), idle_before=st.integers(-1, 8))
def test_arbitrary_inputs_match_reference(prev, cur, closed, idle_before):
    """Duplicated instance ids, counters going backwards, unsorted prev,
    closed instances never seen: whatever comes in, both agree."""
    run(raw_arrays(prev), raw_arrays(cur), raw_arrays(closed, True), idle_before)

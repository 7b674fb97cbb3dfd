"""dkebpf.enrich.nat.NatTable: what counts as DNAT, grace period and
expiry, the stale-dump rule, the entry bound, the resync sweep, and a
hypothesis comparison with a sequential dict model."""
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf._nfct import EV_DESTROY, EV_DUMP, EV_NEW, EV_UPDATE, EVENT_DTYPE
from dkebpf.enrich.nat import NatTable

S = 10**9


def a(text):
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return socket.inet_aton(text) + bytes(12)


def events(*rows):
    """rows: (type, orig (src, dst, sport, dport), reply_src, reply_sport, [ct_id, proto])"""
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, r in enumerate(rows):
        typ, (src, dst, sport, dport), rsrc, rsport = r[:4]
        ct_id = r[4] if len(r) > 4 else 1
        proto = r[5] if len(r) > 5 else 6
        ev[i]["type"], ev[i]["family"], ev[i]["proto"], ev[i]["ct_id"] = typ, 6 if ":" in src else 4, proto, ct_id
        ev[i]["orig_src"], ev[i]["orig_dst"] = a(src), a(dst)
        ev[i]["orig_sport"], ev[i]["orig_dport"] = sport, dport
        ev[i]["reply_src"], ev[i]["reply_sport"] = a(rsrc), rsport
        ev[i]["reply_dst"], ev[i]["reply_dport"] = a(src), sport
    return ev


def look(table, *conns, proto=6):
    """conns: (src, sport, dst, dport) -> [(ip, port) or None]"""
    fam = np.array([6 if ":" in c[0] else 4 for c in conns], np.uint8)
    la = np.frombuffer(b"".join(a(c[0]) for c in conns), "V16")
    ra = np.frombuffer(b"".join(a(c[2]) for c in conns), "V16")
    ip, port = table.lookup(fam, np.full(len(conns), proto, np.uint8), la,
                            np.array([c[1] for c in conns], np.uint16), ra,
                            np.array([c[3] for c in conns], np.uint16))
    return [None if i is None else (i, p) for i, p in zip(ip.to_pylist(), port.to_pylist())]


SVC = ("10.0.0.1", "10.96.0.10", 40000, 80)   # orig tuple: local -> service
POD = ("10.244.1.7", 8080)                    # reply source: the real destination
C_SVC = ("10.0.0.1", 40000, "10.96.0.10", 80)  # as the socket sees it


def test_dnat_reported_untranslated_and_snat_not():
    t = NatTable()
    ev = events((EV_NEW, SVC, *POD),
                (EV_NEW, ("10.0.0.1", "10.0.0.9", 40001, 80), "10.0.0.9", 80),      # plain
                (EV_NEW, ("10.0.0.1", "10.96.0.11", 40002, 80), "10.96.0.11", 8080))  # port only
    # masquerade: reply goes back to another address; the destination is untouched
    snat = events((EV_NEW, ("10.0.0.1", "10.0.0.9", 40003, 80), "10.0.0.9", 80))
    snat["reply_dst"] = a("192.168.1.1")
    t.add(ev)
    t.add(snat)
    assert look(t, C_SVC, ("10.0.0.1", 40001, "10.0.0.9", 80), ("10.0.0.1", 40002, "10.96.0.11", 80),
                ("10.0.0.1", 40003, "10.0.0.9", 80), ("10.0.0.1", 40000, "10.96.0.10", 81)) == [
        ("10.244.1.7", "8080"), None, ("10.96.0.11", "8080"), None, None]
    assert look(t, C_SVC, proto=17) == [None]  # the protocol is part of the key
    assert len(t) == 2
    c = t.counters()
    assert (c["events"], c["events_translated"], c["inserted"], c["lookups"], c["lookup_hits"]) == (4, 2, 2, 6, 2)


def test_ipv6():
    t = NatTable()
    t.add(events((EV_NEW, ("fd00::1", "fd00:96::a", 5000, 443), "fd00:244::7", 8443)))
    assert look(t, ("fd00::1", 5000, "fd00:96::a", 443)) == [("fd00:244::7", "8443")]


def test_destroy_keeps_the_entry_for_the_grace_period():
    t = NatTable(grace_ns=4 * S)
    t.add(events((EV_NEW, SVC, *POD)), now_ns=0)
    t.apply(10 * S)
    t.add(events((EV_DESTROY, SVC, *POD)))
    t.apply(20 * S)
    t.expire(23 * S)
    assert look(t, C_SVC) == [("10.244.1.7", "8080")]
    t.expire(24 * S)
    assert look(t, C_SVC) == [None] and len(t) == 0
    c = t.counters()
    assert (c["destroyed"], c["expired"]) == (1, 1)


def test_connection_created_and_destroyed_in_one_batch_still_tagged():
    t = NatTable(grace_ns=4 * S)
    t.add(events((EV_NEW, SVC, *POD), (EV_UPDATE, SVC, *POD), (EV_DESTROY, SVC, *POD)))
    t.apply(10 * S)
    assert look(t, C_SVC) == [("10.244.1.7", "8080")]
    assert t.counters()["entries_destroyed"] == 1
    t.expire(14 * S)
    assert len(t) == 0


def test_stale_dump_row_does_not_revive_but_a_new_id_does():
    t = NatTable(grace_ns=4 * S)
    t.add(events((EV_NEW, SVC, *POD, 7)))
    t.add(events((EV_DESTROY, SVC, *POD, 7)))
    t.apply(10 * S)
    t.add(events((EV_DUMP, SVC, *POD, 7)))  # taken before the destroy
    t.apply(11 * S)
    t.expire(14 * S)
    assert len(t) == 0
    t.add(events((EV_DESTROY, SVC, *POD, 7)))
    t.apply(20 * S)
    t.add(events((EV_DUMP, SVC, "10.244.1.8", 8080, 8)))  # a later connection on the tuple
    t.apply(21 * S)
    t.expire(100 * S)
    assert look(t, C_SVC) == [("10.244.1.8", "8080")]


def test_untranslated_connection_on_the_same_tuple_replaces():
    t = NatTable()
    t.add(events((EV_NEW, SVC, *POD, 1)))
    t.apply(1)
    t.add(events((EV_NEW, SVC, "10.96.0.10", 80, 2)))
    assert look(t, C_SVC) == [None] and len(t) == 0
    assert t.counters()["untranslated_replaced"] == 1


def test_bound_evicts_destroyed_then_oldest():
    t = NatTable(max_entries=3)
    conns = [("10.0.0.1", "10.96.0.10", 40000 + i, 80) for i in range(5)]
    t.add(events(*[(EV_NEW, c, *POD) for c in conns[:3]]))
    t.apply(1)
    t.add(events((EV_DESTROY, conns[1], *POD)))
    t.apply(2)
    t.add(events(*[(EV_NEW, c, *POD) for c in conns[3:]]))
    t.apply(3)
    assert len(t) == 3
    got = look(t, *[(c[0], c[2], c[1], c[3]) for c in conns])
    # conns[1] (destroyed) went first, then conns[0] (the oldest live)
    assert [g is not None for g in got] == [False, False, True, True, True]
    assert t.counters()["evicted"] == 2


def test_sweep_retires_entries_a_resync_dump_did_not_confirm():
    t = NatTable(grace_ns=S)
    gone, kept = SVC, ("10.0.0.1", "10.96.0.10", 40001, 80)
    t.add(events((EV_NEW, gone, *POD), (EV_NEW, kept, *POD)))
    t.apply(10 * S)
    t.add(events((EV_DUMP, kept, *POD)))   # the dump (started at 20 s) lists only one
    t.apply(21 * S)
    t.sweep(20 * S, 22 * S)
    assert t.counters()["resync_removed"] == 1
    t.expire(23 * S)
    assert look(t, C_SVC, ("10.0.0.1", 40001, "10.96.0.10", 80)) == [None, ("10.244.1.7", "8080")]


def test_wildcard_local_address_matches_on_the_rest_of_the_tuple():
    """Unconnected UDP: netflow knows 0.0.0.0 / :: as the local address."""
    t = NatTable()
    t.add(events((EV_NEW, ("10.0.0.1", "10.96.0.10", 5353, 53), "10.244.0.5", 5353, 1, 17),
                 (EV_NEW, ("fd00::1", "fd00:96::a", 5353, 53), "fd00:244::5", 53, 2, 17),
                 (EV_NEW, ("10.0.0.1", "10.96.0.10", 40000, 80), "10.244.1.7", 8080)))
    assert look(t, ("0.0.0.0", 5353, "10.96.0.10", 53), ("::", 5353, "fd00:96::a", 53),
                ("0.0.0.0", 5354, "10.96.0.10", 53), ("10.0.0.2", 5353, "10.96.0.10", 53),
                proto=17) == [("10.244.0.5", "5353"), ("fd00:244::5", "53"), None, None]
    assert look(t, ("0.0.0.0", 40000, "10.96.0.10", 80)) == [("10.244.1.7", "8080")]
    t.add(events((EV_NEW, ("10.0.0.1", "10.96.0.10", 40001, 80), "10.244.1.8", 8080)))
    assert look(t, ("0.0.0.0", 40001, "10.96.0.10", 80)) == [("10.244.1.8", "8080")]  # index rebuilt


def test_empty_inputs():
    t = NatTable()
    ip, port = t.lookup(np.zeros(0, np.uint8), np.zeros(0, np.uint8), np.zeros(0, "V16"),
                        np.zeros(0, np.uint16), np.zeros(0, "V16"), np.zeros(0, np.uint16))
    assert len(ip) == 0 and len(port) == 0
    t.add(np.zeros(0, EVENT_DTYPE))
    assert look(t, C_SVC) == [None]
    with pytest.raises(ValueError):
        NatTable(max_entries=0)


# ------------------------------------------------ against a sequential model

def model_apply(model, ev, now):
    """The table's rules, one event at a time, in a dict."""
    for r in ev:
        key = (int(r["orig_sport"]), bytes(r["orig_dst"]), int(r["orig_dport"]))
        translated = bytes(r["reply_src"]) != bytes(r["orig_dst"]) or r["reply_sport"] != r["orig_dport"]
        cur = model.get(key)
        if not translated:
            model.pop(key, None)
            continue
        if (r["type"] == EV_DUMP and cur is not None and cur["destroyed"]
                and cur["id"] == int(r["ct_id"])):
            continue
        destroyed = 0
        if r["type"] == EV_DESTROY:
            destroyed = cur["destroyed"] if cur is not None and cur["destroyed"] else now
        model[key] = {"nat": (socket.inet_ntoa(bytes(r["reply_src"])[:4]), str(int(r["reply_sport"]))),
                      "id": int(r["ct_id"]), "destroyed": destroyed}


REPLIES = [None, ("10.244.1.7", 8080), ("10.244.1.8", 80)]  # by conntrack id % 3; None: untranslated


@settings(max_examples=300, deadline=None, database=None)
@given(st.data())
def test_table_matches_sequential_model(data):
    """Realistic histories: per tuple, connections one after another (NEW,
    UPDATEs, DESTROY under one conntrack id, whose reply never changes),
    in event batches, and dump batches listing the live connections (or,
    stale, the last destroyed one). The table applies each batch at once
    (last event per tuple decides); the model applies one event at a time;
    lookups must agree after every batch."""
    t, model, now = NatTable(grace_ns=3 * S), {}, 0
    live, last_id, next_id = {}, {}, 1   # sport -> conntrack id
    for _ in range(data.draw(st.integers(0, 10))):
        now += S
        is_dump = data.draw(st.booleans())
        rows = []
        for sport in data.draw(st.lists(st.integers(1, 5), max_size=8)):
            if is_dump:
                ct_id = live.get(sport, last_id.get(sport))
                if ct_id is None:
                    continue
                typ = EV_DUMP
            elif sport not in live:
                ct_id, next_id = next_id + data.draw(st.integers(0, 2)), next_id + 3
                live[sport] = last_id[sport] = ct_id
                typ = EV_NEW
            else:
                ct_id = live[sport]
                typ = data.draw(st.sampled_from([EV_UPDATE, EV_DESTROY]))
                if typ == EV_DESTROY:
                    del live[sport]
            rep = REPLIES[ct_id % 3] or ("10.96.0.10", 80)
            rows.append((typ, ("10.0.0.1", "10.96.0.10", sport, 80), *rep, ct_id))
        ev = events(*rows)
        t.add(ev)
        t.apply(now)
        model_apply(model, ev, now)
        t.expire(now)
        for k in [k for k, v in model.items() if v["destroyed"] and v["destroyed"] <= now - 3 * S]:
            del model[k]
        keys = sorted(model)
        assert len(t) == len(keys)
        got = look(t, *[("10.0.0.1", k[0], socket.inet_ntoa(k[1][:4]), k[2]) for k in keys])
        assert got == [model[k]["nat"] for k in keys]

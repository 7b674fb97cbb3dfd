"""ext/goroutines.pyx on made-up events: the goroutine of a thread at a
time, parentage through new goroutines, requests written by net/http's
writeLoop given to the roundTrip caller, events newer than the messages
held back, memory aged."""
import numpy as np

from dkebpf import _goroutines as G
from dkebpf import _trace

PID = 4242


def events(*rows):
    """rows: (ts, kind, goid, arg, tid)"""
    ev = np.zeros(len(rows), G.GO_EVENT_DTYPE)
    for i, (ts, kind, goid, arg, tid) in enumerate(rows):
        ev[i] = (ts, goid, arg, PID, tid, kind)
    return ev


def msgs(*rows):
    """rows: (ts, op, tid, sk, user, more)"""
    m = np.zeros(len(rows), _trace.MSG_DTYPE)
    for i, (ts, op, tid, sk, user, more) in enumerate(rows):
        m[i]["ts"], m[i]["op"], m[i]["tid"], m[i]["sk"], m[i]["user"], m[i]["more"] = ts, op, tid, sk, user, more
        m[i]["pid"] = PID
    return m


SW, NEW, RT, WL = G.EV_SWITCH, G.EV_NEWPROC, G.EV_ROUNDTRIP, G.EV_WRITELOOP
RECV, SEND = _trace.OP_RECV, _trace.OP_SEND


def test_goroutine_of_a_thread_at_a_time():
    L = G.GoroutineLinker()
    L.add_events(events((100, SW, 7, 0, 1), (200, SW, 8, 0, 1), (150, SW, 9, 0, 2)))
    got = L.goroutines([PID] * 5, [1, 1, 1, 2, 3], [50, 100, 250, 160, 160])
    assert got.tolist() == [0, 7, 8, 9, 0]
    assert L.goroutines([PID + 1], [1], [300]).tolist() == [0]  # another process's thread 1


def test_parentage_newproc_and_writeloop():
    L = G.GoroutineLinker()
    # goroutine 10 (thread 1) reads request A (id 111) and starts goroutine
    # 11, which calls roundTrip on persistConn 0xpc; goroutine 12 (the
    # writeLoop, thread 2) writes it. Goroutine 20 (thread 3) reads B (222)
    # and calls out itself; goroutine 30 served nothing.
    L.add_events(events((10, SW, 10, 0, 1), (12, SW, 20, 0, 3), (15, WL, 12, 0xBC, 2), (16, SW, 12, 0, 2),
                        (30, NEW, 11, 10, 1), (40, SW, 11, 0, 1), (50, RT, 11, 0xBC, 1), (65, SW, 30, 0, 4)))
    m = msgs((20, RECV, 1, 1, 111, 0), (25, RECV, 3, 2, 222, 0), (60, SEND, 2, 3, 0, 0), (62, SEND, 3, 4, 0, 0),
             (70, SEND, 4, 5, 0, 0))
    L.link(m, np.arange(5), [PID], 71)
    assert m["user"][2] == 111 and m["user"][3] == 222
    assert m["user"][4] not in (0, 111, 222)  # goroutine 30 works for nothing: a root
    assert L.tid_usr(m, np.arange(5)).tolist() == [10, 20, 11, 20, 30]
    assert L.stats["exits_via_writeloop"] == 1 and L.stats["exits_linked"] == 2
    assert L.parents([PID, PID, PID + 1], [11, 10, 11]).tolist() == [10, 0, 0]


def test_short_first_read_belongs_to_the_continuations_goroutine():
    """net/http's background read takes a request's first byte in its own
    goroutine; the connection's goroutine reads the rest and serves it."""
    L = G.GoroutineLinker()
    L.add_events(events((10, SW, 50, 0, 1), (12, SW, 40, 0, 2)))
    m = msgs((20, RECV, 1, 9, 333, 0), (21, RECV, 2, 9, 0, 1), (30, SEND, 2, 8, 0, 0))
    L.link(m, np.array([0, 2]), [PID], 31)
    assert L.tid_usr(m, np.array([0, 2])).tolist() == [40, 40]
    assert m["user"][2] == 333


def test_events_newer_than_the_messages_wait():
    L = G.GoroutineLinker()
    L.add_events(events((10, SW, 1, 0, 1), (11, SW, 2, 0, 2), (12, WL, 2, 0xAA, 2), (13, NEW, 3, 1, 1),
                        (14, SW, 3, 0, 3), (15, RT, 3, 0xAA, 3)))
    m = msgs((11, RECV, 1, 1, 500, 0), (16, SEND, 2, 2, 0, 0))
    L.link(m, np.array([0]), [PID], 13)  # the creation at 13 and the roundTrip at 15 wait
    assert len(L.pending) == 2
    # goroutine 1 served 500 and made 3, so its roundTrip's write is 500's
    L.link(m, np.array([1]), [PID], 17)
    assert m["user"][1] == 500 and len(L.pending) == 0


def test_not_go_processes_are_left_alone():
    L = G.GoroutineLinker()
    L.add_events(events((10, SW, 1, 0, 1)))
    m = msgs((20, SEND, 1, 1, 77, 0))
    L.link(m, np.array([0]), [PID + 1], 21)
    assert m["user"][0] == 77 and L.tid_usr(m, np.array([0])).tolist() == [0]


def test_memory_is_aged():
    L = G.GoroutineLinker(horizon_ns=100, max_entries=1000)
    L.add_events(events(*[(t, SW, t, 0, 1 + t % 3) for t in range(1, 400)]))
    L.forget(500)
    assert L.timeline_size == 3  # each thread's latest stays
    assert L.goroutines([PID], [1], [1000]).tolist() == [399]


def test_timeline_against_brute_force():
    """Switches added in several batches (out of order within each) and
    asked about at random times: the latest switch of the thread at or
    before the time, as a plain scan finds it."""
    rng = np.random.default_rng(7)
    L = G.GoroutineLinker()
    all_ts = rng.permutation(10**6)[:2000] + 1  # distinct times
    rows = []
    for b in range(4):
        ts = all_ts[b * 500:(b + 1) * 500]
        tid = rng.integers(1, 9, 500)
        goid = rng.integers(1, 100, 500)
        batch = [(int(t), SW, int(g), 0, int(d)) for t, g, d in zip(ts, goid, tid)]
        rows += batch
        L.add_events(events(*batch))
        q_tid = rng.integers(1, 10, 200)
        q_ts = rng.integers(0, 10**6, 200)
        got = L.goroutines([PID] * 200, q_tid, q_ts).tolist()
        want = []
        for d, t in zip(q_tid, q_ts):
            seen = [(ts_, g) for (ts_, _, g, _, tid_) in rows if tid_ == d and ts_ <= t]
            want.append(max(seen)[1] if seen else 0)
        assert got == want

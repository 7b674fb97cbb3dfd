"""ebpf-trace's goroutines: Go programs' goroutine ids and parentage, for
the spans of ext/trace.pyx, from bpf/trace_go.bpf.c's events (struct
go_event), without a Python object per event.

* Which goroutine ran on a thread at a kernel time: GO_EV_SWITCH events
  (runtime.execute) kept per thread in time order (numpy arrays sorted by
  (pid, tid), then time); the answer is the latest switch at or before
  the time (binary search, nogil).
* Which request a goroutine works for (its thread_trace_id): one pass in
  time order over the Go events and the new request message starts:
    - an incoming request (entry) read by goroutine g: g works for it;
    - GO_EV_NEWPROC: a new goroutine works for what its creator worked for
      when it created it (handlers that hand work to goroutines);
    - GO_EV_ROUNDTRIP / GO_EV_WRITELOOP: a request written by a net/http
      transport's writeLoop goroutine W belongs to the goroutine of the
      latest roundTrip on W's persistConn (the client's caller);
    - an outgoing request (exit) of goroutine g gets the id g works for;
      none: an id of its own (a root), never the thread's (a thread runs
      many goroutines).
  The running state (goroutine -> id, writeLoop -> persistConn,
  persistConn -> caller) lives in small open-addressing tables in C,
  bounded and aged.
* A Go server reads the first byte of a keep-alive connection's next
  request in a separate goroutine (net/http's connReader.backgroundRead)
  and the rest in the connection's goroutine, which runs the handler: an
  entry whose first call was short (span_msg.more follows) is the
  goroutine's of that continuation.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

import numpy as np
cimport numpy as cnp

from trace_go cimport *
from trace cimport span_msg, span_root_id, TRACE_OP_RECV, TRACE_OP_SEND
from dk_common cimport offset_of, mix64

from dkebpf import _records, _trace

cnp.import_array()

__all__ = ["GO_EVENT_DTYPE", "DROP_NAMES", "GoroutineLinker", "EV_SWITCH", "EV_NEWPROC", "EV_ROUNDTRIP",
           "EV_WRITELOOP"]

EV_SWITCH, EV_NEWPROC, EV_ROUNDTRIP, EV_WRITELOOP = GO_EV_SWITCH, GO_EV_NEWPROC, GO_EV_ROUNDTRIP, GO_EV_WRITELOOP

cdef go_event _e
GO_EVENT_DTYPE = _records._dtype("go_event", [
    ("ts", "<u8", offset_of(&_e, &_e.ts_ns)),
    ("goid", "<u8", offset_of(&_e, &_e.goid)),
    ("arg", "<u8", offset_of(&_e, &_e.arg)),
    ("pid", "<u4", offset_of(&_e, &_e.pid)),
    ("tid", "<u4", offset_of(&_e, &_e.tid)),
    ("kind", "u1", offset_of(&_e, &_e.kind)),
], sizeof(go_event))

DROP_NAMES = _records._drop_names("trace_go.bpf.c", {
    GO_DROP_RING: "go_events_ring_full", GO_DROP_READ: "goid_unreadable",
    GO_DROP_MAPS: "go_maps_full"}, GO_DROP_MAX)

REQUEST_MEMORY_NS = 130_000_000_000  # a request waits up to 120 s for its answer (trace.py EXPIRE_NS)
REQUEST_DTYPE = np.dtype([("key", "<u8"), ("ts", "<u8"), ("goid", "<u8")])   # key: hash of (sk, ts)


# --- a small open-addressing table: nonzero u64 key -> (value, time) ---------

cdef struct slot_t:
    uint64_t key  # 0: empty
    uint64_t val
    uint64_t ts

cdef class _Table:
    cdef slot_t *s
    cdef size_t cap
    cdef size_t n
    cdef size_t limit  # entries at most (the oldest go past it)

    def __cinit__(self, size_t limit):
        self.cap = 1024
        self.n = 0
        self.limit = limit
        self.s = <slot_t *>calloc(self.cap, sizeof(slot_t))
        if self.s == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.s)

    def __len__(self):
        return self.n

    cdef slot_t *get(self, uint64_t key) noexcept nogil:
        cdef size_t i = key & (self.cap - 1)
        while self.s[i].key != 0:
            if self.s[i].key == key:
                return &self.s[i]
            i = (i + 1) & (self.cap - 1)
        return NULL

    cdef bint _rehash(self, size_t cap, uint64_t forget_before) noexcept nogil:
        cdef slot_t *old = self.s
        cdef size_t oldcap = self.cap, k, i
        cdef slot_t *new = <slot_t *>calloc(cap, sizeof(slot_t))
        if new == NULL:
            return False
        self.s, self.cap, self.n = new, cap, 0
        for k in range(oldcap):
            if old[k].key != 0 and old[k].ts >= forget_before:
                i = old[k].key & (cap - 1)
                while new[i].key != 0:
                    i = (i + 1) & (cap - 1)
                new[i] = old[k]
                self.n += 1
        free(old)
        return True

    cdef void put(self, uint64_t key, uint64_t val, uint64_t ts) noexcept nogil:
        cdef slot_t *e = self.get(key)
        cdef size_t i
        if e != NULL:
            e.val, e.ts = val, ts
            return
        if 2 * (self.n + 1) > self.cap:
            if not self._rehash(2 * self.cap, 0):
                return  # out of memory: this fact is not kept
        i = key & (self.cap - 1)
        while self.s[i].key != 0:
            i = (i + 1) & (self.cap - 1)
        self.s[i].key, self.s[i].val, self.s[i].ts = key, val, ts
        self.n += 1

    def forget(self, uint64_t before):
        """Drop entries last set before `before`; past the limit, the oldest
        half too."""
        cdef size_t k, m = 0
        cdef uint64_t cut = before
        cdef uint64_t[::1] T
        if self.n > self.limit:
            ts = np.zeros(self.n, np.uint64)
            T = ts
            for k in range(self.cap):
                if self.s[k].key != 0 and m < self.n:
                    T[m] = self.s[k].ts
                    m += 1
            cut = max(before, int(np.median(ts)))
        with nogil:
            self._rehash(self.cap, cut)


cdef inline uint64_t _key(uint64_t pid, uint64_t x) noexcept nogil:
    return mix64(mix64(x) + pid) | 1


cdef inline uint64_t _req_key(uint64_t sk, uint64_t ts) noexcept nogil:
    return mix64(sk ^ mix64(ts))


cdef void _lookup(const uint64_t *key, const uint64_t *ts, const uint64_t *goid, Py_ssize_t n,
                  const uint64_t *qkey, const uint64_t *qts, uint64_t *out, Py_ssize_t nq) noexcept nogil:
    """out[i] = goid of the latest (key, ts) row with key == qkey[i] and
    ts <= qts[i], else 0; rows sorted by key, then ts."""
    cdef Py_ssize_t i, lo, hi, mid
    for i in range(nq):
        lo, hi = 0, n
        while lo < hi:  # first row > (qkey, qts)
            mid = (lo + hi) >> 1
            if key[mid] < qkey[i] or (key[mid] == qkey[i] and ts[mid] <= qts[i]):
                lo = mid + 1
            else:
                hi = mid
        out[i] = goid[lo - 1] if lo > 0 and key[lo - 1] == qkey[i] else 0


cdef class GoroutineLinker:
    """The goroutines of traced Go processes, fed with go_event records
    (``add_events``) and asked about request message starts (``link``,
    ``tid_usr``). Memory is bounded: switches older than ``horizon_ns``
    go (a thread's latest stays), the tables keep at most ``max_entries``."""

    # the switches, sorted by (key, ts), key = pid << 32 | tid: three
    # contiguous arrays (sorted and searched as such)
    cdef object tl_key, tl_ts, tl_goid
    cdef list fresh               # event batches not yet folded into the timeline and the queue
    cdef public object pending    # GO_EVENT_DTYPE not yet applied (newer than the messages)
    cdef public object requests   # REQUEST_DTYPE sorted by key: logical goroutine of request starts
    cdef _Table works_for         # (pid, goid) -> thread_trace_id
    cdef _Table writer_conn       # (pid, writeLoop goid) -> persistConn
    cdef _Table conn_caller       # (pid, persistConn) -> goroutine of its latest roundTrip
    cdef _Table parent_of         # (pid, goid) -> the goroutine that created it
    cdef public uint64_t horizon_ns
    cdef public Py_ssize_t max_entries
    cdef public dict stats

    def __init__(self, horizon_ns=130_000_000_000, max_entries=1 << 20):
        self.horizon_ns = horizon_ns
        self.max_entries = max_entries
        self.tl_key = np.zeros(0, np.uint64)
        self.tl_ts = np.zeros(0, np.uint64)
        self.tl_goid = np.zeros(0, np.uint64)
        self.fresh = []
        self.pending = np.zeros(0, GO_EVENT_DTYPE)
        self.requests = np.zeros(0, REQUEST_DTYPE)
        self.works_for = _Table(max_entries)
        self.writer_conn = _Table(max_entries)
        self.conn_caller = _Table(max_entries)
        self.parent_of = _Table(max_entries)
        self.stats = {"switches": 0, "newprocs": 0, "roundtrips": 0, "entries": 0, "exits": 0,
                      "exits_linked": 0, "exits_via_writeloop": 0, "no_goroutine": 0}

    def memory(self):
        return {"go_timeline": 3 * self.tl_key.nbytes, "go_pending": self.pending.nbytes,
                "go_fresh": sum(a.nbytes for a in self.fresh),
                "go_requests": self.requests.nbytes,
                "go_tables": 24 * (self.works_for.cap + self.writer_conn.cap + self.conn_caller.cap
                                   + self.parent_of.cap)}

    def add_events(self, events):
        """go_event records (any order), kept until the next question (the
        reader may be woken many times a step: one sort per step)."""
        ev = np.asarray(events)
        if ev.dtype != GO_EVENT_DTYPE:
            raise TypeError("add_events: GO_EVENT_DTYPE records expected")
        if len(ev):
            self.fresh.append(ev)

    def _fold(self):
        """The fresh events into the timelines and the queue."""
        if not self.fresh:
            return
        ev = np.concatenate(self.fresh) if len(self.fresh) > 1 else self.fresh[0]
        self.fresh = []
        kind = ev["kind"]
        is_sw = kind == GO_EV_SWITCH
        nsw = int(is_sw.sum())
        self.stats["switches"] += nsw
        if nsw:
            # columns first (a boolean index of the padded records is slow)
            key = (ev["pid"][is_sw].astype(np.uint64) << np.uint64(32)) | ev["tid"][is_sw]
            ts = np.ascontiguousarray(ev["ts"][is_sw])
            goid = ev["goid"][is_sw]
            o = np.argsort(ts, kind="stable")  # ring order is nearly time order
            key, ts, goid = key[o], ts[o], goid[o]
            self.tl_key, self.tl_ts, self.tl_goid = _merge_timeline(
                self.tl_key, self.tl_ts, self.tl_goid, key, ts, goid)
        rest = ev[~is_sw] if nsw < len(ev) else ev[:0]
        if len(rest):
            self.pending = np.concatenate([self.pending, rest])

    @property
    def timeline_size(self):
        return len(self.tl_key)

    def goroutines(self, pids, tids, ts):
        """The goroutine that ran on each (pid, tid) at kernel time ts; 0
        where none is known."""
        self._fold()
        qkey = np.ascontiguousarray((np.asarray(pids).astype(np.uint64) << np.uint64(32)) |
                                    np.asarray(tids).astype(np.uint64))
        qts = np.ascontiguousarray(ts, np.uint64)
        out = np.zeros(len(qkey), np.uint64)
        k, t, g = self.tl_key, self.tl_ts, self.tl_goid
        cdef const uint64_t[::1] K = k, T = t, G = g, QK = qkey, QT = qts
        cdef uint64_t[::1] O = out
        if len(qkey) and len(k):
            with nogil:
                _lookup(&K[0], &T[0], &G[0], K.shape[0], &QK[0], &QT[0], &O[0], QK.shape[0])
        return out

    def link(self, msgs, idx, go_pids, uint64_t applied_before):
        """Give the request message starts msgs[idx] of Go processes
        (pids in go_pids) their goroutine and, for outgoing ones, the
        thread_trace_id (msgs['user']) of the request their goroutine works
        for. msgs['user'] of incoming ones must be set (their own ids).
        Go events older than applied_before are applied first, in time
        order with the messages; newer ones wait for the next call (their
        messages may not have been read yet)."""
        self._fold()
        cdef cnp.ndarray M_arr = msgs
        if M_arr.dtype != _trace.MSG_DTYPE or not M_arr.flags.c_contiguous:
            raise TypeError("link: msgs must be a contiguous MSG_DTYPE array (it is written)")
        idx = np.asarray(idx, np.int64)
        idx = idx[np.isin(msgs["pid"][idx], np.asarray(go_pids, np.uint32))]
        idx = idx[np.argsort(msgs["ts"][idx], kind="stable")]
        # who read an incoming request: the continuation's goroutine when
        # the first call was short (net/http's background 1-byte read)
        who = np.arange(len(msgs))
        if len(msgs) > 1:
            o = np.lexsort((msgs["ts"], msgs["sk"]))
            a, b = o[:len(o) - 1], o[1:]  # each record and the next of its socket
            cont = (msgs["more"][b] == 1) & (msgs["sk"][b] == msgs["sk"][a])
            who[a[cont]] = b[cont]
        reader = np.where(msgs["op"][idx] == TRACE_OP_RECV, who[idx], idx)
        goids = self.goroutines(msgs["pid"][reader], msgs["tid"][reader], msgs["ts"][reader])
        pend = self.pending
        now = pend["ts"] < applied_before
        ev = pend[now]
        ev = np.ascontiguousarray(ev[np.argsort(ev["ts"], kind="stable")])
        self.pending = pend[~now]
        logical = np.zeros(len(idx), np.uint64)
        cdef span_msg *M = <span_msg *>cnp.PyArray_DATA(M_arr)
        cdef const int64_t[::1] I = idx
        cdef const uint64_t[::1] Gd = goids
        cdef uint64_t[::1] L = logical
        ets, egoid, earg = (np.ascontiguousarray(ev[f], np.uint64) for f in ("ts", "goid", "arg"))
        epid = np.ascontiguousarray(ev["pid"], np.uint64)
        ekind = np.ascontiguousarray(ev["kind"], np.uint8)
        cdef const uint64_t[::1] Ets = ets, Eg = egoid, Ea = earg, Ep = epid
        cdef const uint8_t[::1] Ek = ekind
        cdef Py_ssize_t ne = Ets.shape[0], nr = I.shape[0], e = 0, r = 0
        cdef slot_t *s
        cdef slot_t *w
        cdef span_msg *m
        cdef uint64_t g, pid
        cdef int64_t newprocs = 0, roundtrips = 0, entries = 0, exits = 0, linked = 0, via = 0, nogo = 0
        with nogil:
            while e < ne or r < nr:
                if e < ne and (r >= nr or Ets[e] <= M[I[r]].ts_ns):
                    pid = Ep[e]
                    if Ek[e] == GO_EV_NEWPROC:  # goid created by arg: works for what arg works for
                        newprocs += 1
                        self.parent_of.put(_key(pid, Eg[e]), Ea[e], Ets[e])
                        s = self.works_for.get(_key(pid, Ea[e]))
                        if s != NULL:
                            self.works_for.put(_key(pid, Eg[e]), s.val, Ets[e])
                    elif Ek[e] == GO_EV_ROUNDTRIP:
                        roundtrips += 1
                        self.conn_caller.put(_key(pid, Ea[e]), Eg[e], Ets[e])
                    elif Ek[e] == GO_EV_WRITELOOP:
                        self.writer_conn.put(_key(pid, Eg[e]), Ea[e], Ets[e])
                    e += 1
                    continue
                m = &M[I[r]]
                pid = m.pid
                g = Gd[r]
                if g == 0:
                    nogo += 1
                elif m.op == TRACE_OP_RECV:  # an entry: its reader works for it now
                    entries += 1
                    self.works_for.put(_key(pid, g), m.user, m.ts_ns)
                else:
                    exits += 1
                    w = self.writer_conn.get(_key(pid, g))
                    if w != NULL:  # written by a transport's writeLoop: its caller's
                        s = self.conn_caller.get(_key(pid, w.val))
                        if s != NULL:
                            g = s.val
                            via += 1
                            s = self.works_for.get(_key(pid, g))
                        # (caller unknown: not what the writeLoop's creator
                        # worked for, which was the first caller's)
                    else:
                        s = self.works_for.get(_key(pid, g))
                    if s != NULL:
                        m.user = s.val
                        linked += 1
                    else:  # works for no request known: a root of its own
                        m.user = span_root_id(m)
                L[r] = g
                r += 1
        for k, v in (("newprocs", newprocs), ("roundtrips", roundtrips), ("entries", entries), ("exits", exits),
                     ("exits_linked", linked), ("exits_via_writeloop", via), ("no_goroutine", nogo)):
            self.stats[k] += v
        if nr:
            add = np.zeros(nr, REQUEST_DTYPE)
            add["key"] = _req_keys(msgs["sk"][idx], msgs["ts"][idx])
            add["ts"], add["goid"] = msgs["ts"][idx], logical
            rq = np.concatenate([self.requests, add[logical != 0]])
            self.requests = rq[np.argsort(rq["key"], kind="stable")]

    def parents(self, pids, goids):
        """The goroutine that created each (pid, goid), as far as link()
        has applied the creations; 0 where not known."""
        P = np.ascontiguousarray(pids, np.uint64)
        Q = np.ascontiguousarray(goids, np.uint64)
        out = np.zeros(len(Q), np.uint64)
        cdef const uint64_t[::1] Pv = P, Qv = Q
        cdef uint64_t[::1] O = out
        cdef Py_ssize_t i
        cdef slot_t *e
        for i in range(Qv.shape[0]):
            e = self.parent_of.get(_key(Pv[i], Qv[i]))
            if e != NULL:
                O[i] = e.val
        return out

    def tid_usr(self, msgs, idx):
        """The goroutine of each request message start msgs[idx] (the
        client's caller for a request a writeLoop wrote), 0 where not a
        Go request seen by link()."""
        rq = self.requests
        out = np.zeros(len(idx), np.uint64)
        if not len(rq) or not len(idx):
            return out
        keys = _req_keys(msgs["sk"][idx], msgs["ts"][idx])
        at = np.minimum(np.searchsorted(rq["key"], keys), len(rq) - 1)
        hit = rq["key"][at] == keys
        out[hit] = rq["goid"][at[hit]]
        return out

    def forget(self, uint64_t now_ns):
        """Age the memory: switches older than the horizon (each thread's
        latest stays: the kernel sends a thread's goroutine only when it
        changes); requests and table entries older than REQUEST_MEMORY_NS."""
        cdef uint64_t before = now_ns - self.horizon_ns if now_ns > self.horizon_ns else 0
        self._fold()
        key, ts = self.tl_key, self.tl_ts
        n = len(key)
        if n:
            last = np.ones(n, bool)
            last[:n - 1] = key[1:] != key[:n - 1]
            keep = last | (ts >= before)
            if keep.sum() > self.max_entries:  # bounded: the oldest switches go
                cut = np.sort(ts[keep & ~last])[int(keep.sum()) - self.max_entries - 1]
                keep &= last | (ts > cut)
            if not keep.all():
                self.tl_key, self.tl_ts, self.tl_goid = key[keep], ts[keep], self.tl_goid[keep]
        rq = self.requests  # (kept longer: a request waits up to 120 s for its answer)
        rq = rq[rq["ts"] + REQUEST_MEMORY_NS >= now_ns]
        if len(rq) > self.max_entries:
            rq = rq[np.argsort(rq["ts"], kind="stable")[len(rq) - self.max_entries:]]
            rq = rq[np.argsort(rq["key"], kind="stable")]
        self.requests = rq
        # what goroutines work for is kept as long as a request may last
        for t in (self.works_for, self.writer_conn, self.conn_caller, self.parent_of):
            t.forget(now_ns - REQUEST_MEMORY_NS if now_ns > REQUEST_MEMORY_NS else 0)
        if len(self.pending) > self.max_entries:
            self.pending = self.pending[len(self.pending) - self.max_entries:]


def _merge_timeline(ok, ot, og, nk, nt, ng):
    """(key, ts, goid) sorted by (key, ts): the old timeline (so sorted)
    with new switches (in time order), grouped by key with a counting
    sort (a batch has few threads) and merged, in C."""
    nk = np.ascontiguousarray(nk, np.uint64)
    cdef Py_ssize_t n = len(nk), no = len(ok), i, j, a, b, w
    # the batch's threads: a dense number each (hash table, in C), then
    # their rank in key order (a sort of the few distinct keys)
    cdef _Table dense = _Table(n + 1)
    pos = np.empty(n, np.int64)
    distinct = np.empty(n, np.uint64)
    cdef int64_t[::1] P = pos
    cdef uint64_t[::1] D = distinct
    cdef const uint64_t[::1] NK = nk, NT = np.ascontiguousarray(nt, np.uint64), NG = np.ascontiguousarray(ng, np.uint64)
    cdef Py_ssize_t nd = 0
    cdef slot_t *e
    with nogil:
        for i in range(n):
            e = dense.get(NK[i] + 1)  # (+1: a nonzero table key; pid << 32 | tid is never all ones)
            if e == NULL:
                D[nd] = NK[i]
                P[i] = nd
                dense.put(NK[i] + 1, nd, 0)
                nd += 1
            else:
                P[i] = e.val
    rank = np.empty(nd, np.int64)
    rank[np.argsort(distinct[:nd])] = np.arange(nd)
    pos = rank[pos]
    P = pos
    counts = np.bincount(pos, minlength=nd).astype(np.int64)
    start = np.zeros(nd + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    gk = np.empty(n, np.uint64)
    gt = np.empty(n, np.uint64)
    gg = np.empty(n, np.uint64)
    cdef int64_t[::1] S = start.copy()
    cdef uint64_t[::1] GK = gk, GT = gt, GG = gg
    with nogil:
        for i in range(n):  # stable: time order kept within a thread
            j = S[P[i]]
            S[P[i]] += 1
            GK[j], GT[j], GG[j] = NK[i], NT[i], NG[i]
    if not no:
        return gk, gt, gg
    mk = np.empty(no + n, np.uint64)
    mt = np.empty(no + n, np.uint64)
    mg = np.empty(no + n, np.uint64)
    cdef const uint64_t[::1] OK = np.ascontiguousarray(ok, np.uint64), OT = np.ascontiguousarray(ot, np.uint64)
    cdef const uint64_t[::1] OG = np.ascontiguousarray(og, np.uint64)
    cdef uint64_t[::1] MK = mk, MT = mt, MG = mg
    a = b = w = 0
    with nogil:
        while a < no or b < n:
            if b >= n or (a < no and (OK[a] < GK[b] or (OK[a] == GK[b] and OT[a] <= GT[b]))):
                MK[w], MT[w], MG[w] = OK[a], OT[a], OG[a]
                a += 1
            else:
                MK[w], MT[w], MG[w] = GK[b], GT[b], GG[b]
                b += 1
            w += 1
    return mk, mt, mg


def _req_keys(sk, ts):
    sk = np.ascontiguousarray(sk, np.uint64)
    ts = np.ascontiguousarray(ts, np.uint64)
    out = np.empty(len(sk), np.uint64)
    cdef const uint64_t[::1] S = sk, T = ts
    cdef uint64_t[::1] O = out
    cdef Py_ssize_t i
    with nogil:
        for i in range(S.shape[0]):
            O[i] = _req_key(S[i], T[i])
    return out

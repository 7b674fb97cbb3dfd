"""Connection-table merge: per-interval deltas of the kernel's flow maps.

Each interval user space dumps the kernel's flow maps, `tcp_flows` and
`conns` (cumulative counters of every live flow instance, in hash order;
plugins/netflow.py, flow_table), and then drains the `closed` ring buffer
(final totals of TCP connections the kernel removed from the map, see
bpf/netflow.bpf.c end_tcp_flow). Because the dump comes first, a
connection that closed in between shows up twice: partially in the dump and
finally in the ring. `merge` joins the previous snapshot, the dump and the
ring on the flow *instance* (key.sk, key.raddr, key.rport, stats.ts_first) —
the kernel reuses socket addresses, ts_first (bpf_ktime_get_ns() at creation)
tells instances apart — and emits one delta row per instance that moved,
counting every byte exactly once.

All three inputs are turned into compact sort entries, sorted in C (an LSD
radix sort on the socket address, which is unique for all but unconnected UDP
sockets, then a merge sort of the runs that share a socket) and merge-joined
in one pass with the GIL released. No Python object is created per row.

Snapshot order (what `merge` returns and prefers to receive back as `prev`):
ascending (sk, raddr[0:8] and raddr[8:16] as native u64, rport, ts_first).
A `prev` in any other order is accepted and sorted first.
"""
import threading

import numpy as np
import pyarrow as pa

cimport numpy as cnp
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset

from netflow cimport *
from dk_common cimport offset_of

from dkebpf._records import EVENT_DTYPE, KEY_DTYPE, STATS_DTYPE, _dtype, comm_to_arrow

cnp.import_array()

cdef extern from *:
    """
    #define DK_PREFETCH(p) __builtin_prefetch((const void *)(p))
    """
    void DK_PREFETCH(const void *p) nogil

# The dump is in hash order, so the merge visits its rows in random order:
# ask for the rows this many entries ahead, so the cache misses overlap.
cdef enum:
    PREFETCH_AHEAD = 16
    # radix digit: 2048 buckets, their counters and write streams stay cached
    RADIX_BITS = 11

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil
    int __builtin_clzll(unsigned long long) nogil


# One delta row. Packed so the numpy dtype below is exactly these bytes; the
# u64 counters come first and the explicit tail pad keeps the row a multiple
# of 8 bytes, so the counter columns stay aligned in every row.
cdef packed struct nf_conn_delta:
    uint64_t d_bytes_sent
    uint64_t d_bytes_recv
    uint64_t d_retransmits
    uint8_t laddr[16]
    uint8_t raddr[16]
    uint32_t pid
    uint32_t rtt_us
    uint32_t rtt_var_us
    uint16_t lport
    uint16_t rport
    uint8_t family
    uint8_t proto
    uint8_t direction
    uint8_t established
    uint8_t closed
    char comm[16]
    uint8_t _pad[3]

cdef nf_conn_delta _d

DELTA_DTYPE = _dtype("nf_conn_delta", [
    ("d_bytes_sent", "<u8", offset_of(&_d, &_d.d_bytes_sent)),
    ("d_bytes_recv", "<u8", offset_of(&_d, &_d.d_bytes_recv)),
    ("d_retransmits", "<u8", offset_of(&_d, &_d.d_retransmits)),
    ("laddr", "V16", offset_of(&_d, &_d.laddr)),
    ("raddr", "V16", offset_of(&_d, &_d.raddr)),
    ("pid", "<u4", offset_of(&_d, &_d.pid)),
    ("rtt_us", "<u4", offset_of(&_d, &_d.rtt_us)),
    ("rtt_var_us", "<u4", offset_of(&_d, &_d.rtt_var_us)),
    ("lport", "<u2", offset_of(&_d, &_d.lport)),
    ("rport", "<u2", offset_of(&_d, &_d.rport)),
    ("family", "u1", offset_of(&_d, &_d.family)),
    ("proto", "u1", offset_of(&_d, &_d.proto)),
    ("direction", "u1", offset_of(&_d, &_d.direction)),
    ("established", "u1", offset_of(&_d, &_d.established)),
    ("closed", "u1", offset_of(&_d, &_d.closed)),
    ("comm", "S16", offset_of(&_d, &_d.comm)),
], sizeof(nf_conn_delta))

# The merge reads the input rows through the C structs: the dtypes must
# describe exactly those bytes (records.pyx derives them from the same header).
if (KEY_DTYPE.itemsize != sizeof(nf_conn_key) or STATS_DTYPE.itemsize != sizeof(nf_conn_stats)
        or EVENT_DTYPE.itemsize != sizeof(nf_conn_event) or NF_COMM_LEN != 16
        or sizeof(nf_conn_delta) % 8 != 0):
    raise ImportError("dkebpf._conntable: record layouts disagree with bpf/include/netflow.h; "
                      "rebuild the extensions (python3 setup.py build_ext --inplace)")

DELTA_SCHEMA = pa.schema([
    ("pid", pa.uint32()),
    ("comm", pa.string()),
    ("family", pa.uint8()),
    ("proto", pa.uint8()),
    ("direction", pa.uint8()),
    ("laddr", pa.binary(16)),
    ("lport", pa.uint16()),
    ("raddr", pa.binary(16)),
    ("rport", pa.uint16()),
    ("bytes_sent", pa.uint64()),
    ("bytes_recv", pa.uint64()),
    ("retransmits", pa.uint64()),
    ("rtt_us", pa.uint32()),
    ("rtt_var_us", pa.uint32()),
    ("established", pa.uint8()),
    ("closed", pa.uint8()),
])


# ---------------------------------------------------------------- sorting

# Sort entry: the instance id unpacked into integers (the 16 address bytes as
# two native u64: any consistent total order will do, it only has to be the
# same for prev, cur and closed), then ts_last and the row index as
# tie-breakers so that duplicates of one instance id end with the newest.
ctypedef struct sent_t:
    uint64_t sk
    uint64_t r0
    uint64_t r1
    uint64_t ts_first
    uint64_t ts_last
    uint32_t rport
    uint32_t idx


cdef inline int inst_cmp(const sent_t *a, const sent_t *b) noexcept nogil:
    """Order of instance ids; 0 when a and b are the same flow instance."""
    if a.sk != b.sk:
        return -1 if a.sk < b.sk else 1
    if a.r0 != b.r0:
        return -1 if a.r0 < b.r0 else 1
    if a.r1 != b.r1:
        return -1 if a.r1 < b.r1 else 1
    if a.rport != b.rport:
        return -1 if a.rport < b.rport else 1
    if a.ts_first != b.ts_first:
        return -1 if a.ts_first < b.ts_first else 1
    return 0


cdef inline int full_cmp(const sent_t *a, const sent_t *b) noexcept nogil:
    cdef int c = inst_cmp(a, b)
    if c:
        return c
    if a.ts_last != b.ts_last:
        return -1 if a.ts_last < b.ts_last else 1
    if a.idx != b.idx:
        return -1 if a.idx < b.idx else 1
    return 0


cdef inline void fill_entry(sent_t *e, const nf_conn_key *k, const nf_conn_stats *s,
                            uint32_t idx) noexcept nogil:
    e.sk = k.sk
    memcpy(&e.r0, &k.raddr[0], 8)
    memcpy(&e.r1, &k.raddr[8], 8)
    e.rport = k.rport
    e.ts_first = s.ts_first
    e.ts_last = s.ts_last
    e.idx = idx


cdef void insertion_sort(sent_t *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef sent_t v
    for i in range(1, n):
        v = a[i]
        j = i
        while j > 0 and full_cmp(&a[j - 1], &v) > 0:
            a[j] = a[j - 1]
            j -= 1
        a[j] = v


cdef void merge_sort(sent_t *a, sent_t *tmp, Py_ssize_t n) noexcept nogil:
    """Top-down merge sort; tmp holds at least n // 2 entries."""
    cdef Py_ssize_t h, i, j, k
    if n <= 16:
        insertion_sort(a, n)
        return
    h = n // 2
    merge_sort(a, tmp, h)
    merge_sort(a + h, tmp, n - h)
    if full_cmp(&a[h - 1], &a[h]) <= 0:
        return
    memcpy(tmp, a, h * sizeof(sent_t))
    i = 0
    j = h
    k = 0
    while i < h and j < n:
        if full_cmp(&a[j], &tmp[i]) < 0:
            a[k] = a[j]
            j += 1
        else:
            a[k] = tmp[i]
            i += 1
        k += 1
    while i < h:
        a[k] = tmp[i]
        i += 1
        k += 1


cdef void sort_entries(sent_t *a, sent_t *tmp, Py_ssize_t n) noexcept nogil:
    """Sort by full_cmp. tmp holds n entries.

    LSD radix sort on sk over just the bits that differ between entries
    (kernel socket pointers share their top bits, and slab objects are
    aligned: some 25-30 bits vary), in digits of at most RADIX_BITS, so
    usually 3 passes; then each run of equal sk -- an unconnected UDP socket
    with several peers, or duplicates -- is sorted on the rest."""
    cdef size_t *hist
    cdef size_t *h
    cdef size_t c, total
    cdef Py_ssize_t i, j
    cdef int p, npass, lo, bits, width, shift
    cdef uint64_t v, all_and = <uint64_t>-1, any_or = 0, diff, mask
    cdef Py_ssize_t d, nb
    cdef sent_t *src = a
    cdef sent_t *dst = tmp
    cdef sent_t *sw
    if n < 2:
        return
    if n <= 64:
        merge_sort(a, tmp, n)
        return
    for i in range(n):
        all_and &= a[i].sk
        any_or |= a[i].sk
    diff = all_and ^ any_or  # the bits that vary
    if diff != 0:
        lo = __builtin_ctzll(diff)
        bits = 64 - __builtin_clzll(diff) - lo
        npass = (bits + RADIX_BITS - 1) // RADIX_BITS
        width = (bits + npass - 1) // npass
        nb = (<Py_ssize_t>1) << width
        mask = <uint64_t>(nb - 1)
        hist = <size_t *>calloc(npass * nb, sizeof(size_t))
        if hist == NULL:
            merge_sort(a, tmp, n)  # no memory for buckets: slower, still right
            return
        for i in range(n):
            v = a[i].sk >> lo
            for p in range(npass):
                hist[p * nb + ((v >> (p * width)) & mask)] += 1
        for p in range(npass):
            h = hist + p * nb
            shift = lo + p * width
            if h[(src[0].sk >> shift) & mask] == <size_t>n:
                continue  # one bucket holds all: nothing to do
            total = 0
            for d in range(nb):
                c = h[d]
                h[d] = total
                total += c
            for i in range(n):
                d = <Py_ssize_t>((src[i].sk >> shift) & mask)
                dst[h[d]] = src[i]
                h[d] += 1
            sw = src
            src = dst
            dst = sw
        free(hist)
        if src != a:
            memcpy(a, src, n * sizeof(sent_t))
    i = 0
    while i < n:
        j = i + 1
        while j < n and a[j].sk == a[i].sk:
            j += 1
        if j - i > 1:
            merge_sort(a + i, tmp, j - i)
        i = j


cdef bint is_sorted(const sent_t *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(1, n):
        if full_cmp(&a[i - 1], &a[i]) > 0:
            return False
    return True


# ------------------------------------------------------------------ merge

cdef struct merge_out:
    nf_conn_delta *delta
    nf_conn_key *next_keys
    nf_conn_stats *next_stats
    nf_conn_key *idle_keys
    Py_ssize_t n_delta
    Py_ssize_t n_next
    Py_ssize_t n_idle


cdef inline bint _tcp_flow(const nf_conn_stats *st) noexcept nogil:
    """A TCP instance the kernel reports when it closes (on_destroy's rule):
    established while watched, or moved bytes."""
    return st.proto == 6 and ((st.flags & NF_F_ESTABLISHED) != 0 or st.bytes_sent != 0 or st.bytes_recv != 0)


cdef inline void emit_instance(const nf_conn_stats *base, const nf_conn_key *cur_key,
                               const nf_conn_stats *cur_st, const nf_conn_key *clo_key,
                               const nf_conn_stats *clo_st, uint64_t idle_before,
                               merge_out *out) noexcept nogil:
    """Apply the rules to one instance. base: the previous snapshot's record
    of this instance or NULL; cur_*: its record in the dump or NULL; clo_*:
    its closed-ring record or NULL. At least one of cur/clo is set."""
    cdef const nf_conn_key *key
    cdef const nf_conn_stats *st
    cdef nf_conn_delta *row
    cdef uint64_t d_sent, d_recv, d_retr
    cdef uint8_t est, is_closed, tcp_closed
    if clo_st != NULL:
        # final totals: the partial dump record (if any) is superseded
        key = clo_key
        st = clo_st
        is_closed = 1
    else:
        key = cur_key
        st = cur_st
        is_closed = 0
    # Counters of one instance only grow; if not, the previous record cannot
    # be a base for a difference: count this record as a new instance.
    if base != NULL and (st.bytes_sent < base.bytes_sent or st.bytes_recv < base.bytes_recv
                         or st.retransmits < base.retransmits):
        base = NULL
    if base != NULL:
        d_sent = st.bytes_sent - base.bytes_sent
        d_recv = st.bytes_recv - base.bytes_recv
        d_retr = st.retransmits - base.retransmits
        # counted once, in the interval the handshake is first seen: when
        # prev already had the flag it was counted then (a flow first dumped
        # in SYN_SENT is counted when it turns established)
        est = (st.flags & NF_F_ESTABLISHED) != 0 and (base.flags & NF_F_ESTABLISHED) == 0
    else:
        d_sent = st.bytes_sent
        d_recv = st.bytes_recv
        d_retr = st.retransmits
        est = (st.flags & NF_F_ESTABLISHED) != 0

    if not is_closed:
        # No send/recv/state change since the last dump and older than the
        # threshold: the caller takes it out of the kernel map and hands its
        # final record back as a closed one next time (bytes that came in
        # between are counted then), so it stays in the snapshot as the base.
        # A TCP connection that is a flow ends only at its close, which the
        # kernel reports once however long it was idle.
        if (base != NULL and st.ts_last == base.ts_last and st.ts_last < idle_before
                and not _tcp_flow(st)):
            out.idle_keys[out.n_idle] = cur_key[0]
            out.n_idle += 1
        out.next_keys[out.n_next] = cur_key[0]
        out.next_stats[out.n_next] = cur_st[0]
        out.n_next += 1

    # a TCP flow the kernel closed (a ring record) counts in tcp_closed even
    # when nothing else moved; a final record of an evicted flow (a map
    # record, no NF_F_CLOSED) only adds what moved
    tcp_closed = is_closed and (st.flags & NF_F_CLOSED) != 0 and _tcp_flow(st)
    if d_sent == 0 and d_recv == 0 and d_retr == 0 and not est and not tcp_closed:
        return
    row = &out.delta[out.n_delta]
    out.n_delta += 1
    memset(row, 0, sizeof(nf_conn_delta))
    row.d_bytes_sent = d_sent
    row.d_bytes_recv = d_recv
    row.d_retransmits = d_retr
    memcpy(row.laddr, st.laddr, 16)
    memcpy(row.raddr, key.raddr, 16)
    row.pid = st.pid
    row.rtt_us = st.rtt_us
    row.rtt_var_us = st.rtt_var_us
    row.lport = st.lport
    row.rport = key.rport
    row.family = st.family
    row.proto = st.proto
    row.direction = st.direction
    row.established = est
    row.closed = tcp_closed
    memcpy(row.comm, st.comm, 16)


cdef void merge_join(const sent_t *P, Py_ssize_t nP, const sent_t *C, Py_ssize_t nC,
                     const sent_t *X, Py_ssize_t nX,
                     const nf_conn_stats *prev_stats,
                     const nf_conn_key *cur_keys, const nf_conn_stats *cur_stats,
                     const nf_conn_event *closed, uint64_t idle_before,
                     merge_out *out) noexcept nogil:
    """One pass over the three sorted entry arrays. For every instance id the
    last entry of each input wins (largest ts_last, then the latest row)."""
    cdef Py_ssize_t i = 0, j = 0, k = 0
    cdef const sent_t *m
    cdef const sent_t *p
    cdef const sent_t *c
    cdef const sent_t *x
    while j < nC or k < nX:
        if j + PREFETCH_AHEAD < nC:
            DK_PREFETCH(&cur_keys[C[j + PREFETCH_AHEAD].idx])
            DK_PREFETCH(&cur_stats[C[j + PREFETCH_AHEAD].idx])
            DK_PREFETCH(<const char *>&cur_stats[C[j + PREFETCH_AHEAD].idx] + 64)
        # the smallest head among the inputs that can still produce output;
        # prev-only instances (gone from the map without a closed record:
        # the handshake never completed, or the ring was full) yield nothing
        m = NULL
        if j < nC:
            m = &C[j]
        if k < nX and (m == NULL or inst_cmp(&X[k], m) < 0):
            m = &X[k]
        while i < nP and inst_cmp(&P[i], m) < 0:
            i += 1
        p = NULL
        while i < nP and inst_cmp(&P[i], m) == 0:
            p = &P[i]
            i += 1
        c = NULL
        while j < nC and inst_cmp(&C[j], m) == 0:
            c = &C[j]
            j += 1
        x = NULL
        while k < nX and inst_cmp(&X[k], m) == 0:
            x = &X[k]
            k += 1
        emit_instance(&prev_stats[p.idx] if p != NULL else NULL,
                      &cur_keys[c.idx] if c != NULL else NULL,
                      &cur_stats[c.idx] if c != NULL else NULL,
                      &closed[x.idx].key if x != NULL else NULL,
                      &closed[x.idx].stats if x != NULL else NULL,
                      idle_before, out)


cdef class _Scratch:
    """Sort entries, kept from one merge to the next: a fresh 30 MB malloc
    per interval (200k flows) is mmap'ed and page-faulted anew every time,
    which cost as much as the sort."""
    cdef sent_t *buf
    cdef Py_ssize_t cap

    def __dealloc__(self):
        free(self.buf)

    cdef sent_t *reserve(self, Py_ssize_t n) except NULL:
        cdef sent_t *p
        n = max(n, 64)
        if n > self.cap or n * 4 < self.cap:  # grow, or give back after a burst
            p = <sent_t *>realloc(self.buf, n * sizeof(sent_t))
            if p == NULL:
                raise MemoryError(f"merge: cannot allocate sort entries for {n} rows")
            self.buf = p
            self.cap = n
        return self.buf


cdef _Scratch _scratch = _Scratch()
_scratch_lock = threading.Lock()


cdef cnp.ndarray _checked(object arr, object dtype, str name):
    if not isinstance(arr, np.ndarray) or arr.ndim != 1:
        raise TypeError(f"merge: {name} must be a 1-d numpy structured array, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"merge: {name} has dtype {arr.dtype}, expected {dtype} "
                        f"(use the dtypes from dkebpf._records)")
    if arr.shape[0] >= 0xffffffff:
        raise ValueError(f"merge: {name} has {arr.shape[0]} rows, more than 2**32 - 1")
    if not arr.flags.c_contiguous:
        # copy whole rows, padding included: numpy's own copy of a structured
        # array writes only the named fields, and the kernel compares map
        # keys (returned as idle_keys) bytewise
        arr = np.ascontiguousarray(arr.view(np.dtype((np.void, dtype.itemsize)))).view(dtype)
    return arr


def merge(prev_keys, prev_stats, cur_keys, cur_stats, closed, idle_before_ns):
    """Merge one interval of the connection table.

    prev_keys/prev_stats: the snapshot this function returned last interval
    (empty the first time); cur_keys/cur_stats: this interval's dump of the
    kernel's flow maps (plugins/netflow.py, flow_table), any order; closed: the records drained from the
    `closed` ring after the dump (EVENT_DTYPE); idle_before_ns: instances
    whose ts_last has not moved since the previous snapshot and is older than
    this (bpf_ktime_get_ns() clock) are idle.

    Returns (delta, next_keys, next_stats, idle_keys): delta rows
    (DELTA_DTYPE) of instances that moved, opened or closed; the snapshot to
    pass back as prev next time (sorted, closed instances removed); the keys
    of idle instances, to be taken out of the kernel map, whose final
    records the caller passes as `closed` next time (they stay in the
    snapshot as the base). TCP flows are never idle: they end at their
    close.
    """
    cdef cnp.ndarray pk = _checked(prev_keys, KEY_DTYPE, "prev_keys")
    cdef cnp.ndarray ps = _checked(prev_stats, STATS_DTYPE, "prev_stats")
    cdef cnp.ndarray ck = _checked(cur_keys, KEY_DTYPE, "cur_keys")
    cdef cnp.ndarray cs = _checked(cur_stats, STATS_DTYPE, "cur_stats")
    cdef cnp.ndarray ce = _checked(closed, EVENT_DTYPE, "closed")
    if pk.shape[0] != ps.shape[0]:
        raise ValueError(f"merge: prev_keys has {pk.shape[0]} rows but prev_stats {ps.shape[0]}")
    if ck.shape[0] != cs.shape[0]:
        raise ValueError(f"merge: cur_keys has {ck.shape[0]} rows but cur_stats {cs.shape[0]}")
    cdef uint64_t idle_before
    idle = int(idle_before_ns)
    if idle <= 0:
        idle_before = 0
    elif idle >= 1 << 64:
        idle_before = <uint64_t>0xffffffffffffffffULL
    else:
        idle_before = idle

    cdef Py_ssize_t nP = pk.shape[0], nC = ck.shape[0], nX = ce.shape[0]
    cdef cnp.ndarray delta = np.empty(nC + nX, DELTA_DTYPE)
    cdef cnp.ndarray next_keys = np.empty(nC, KEY_DTYPE)
    cdef cnp.ndarray next_stats = np.empty(nC, STATS_DTYPE)
    cdef cnp.ndarray idle_keys = np.empty(nC, KEY_DTYPE)

    cdef const nf_conn_key *PK = <const nf_conn_key *>cnp.PyArray_DATA(pk)
    cdef const nf_conn_stats *PS = <const nf_conn_stats *>cnp.PyArray_DATA(ps)
    cdef const nf_conn_key *CK = <const nf_conn_key *>cnp.PyArray_DATA(ck)
    cdef const nf_conn_stats *CS = <const nf_conn_stats *>cnp.PyArray_DATA(cs)
    cdef const nf_conn_event *CE = <const nf_conn_event *>cnp.PyArray_DATA(ce)
    cdef merge_out out
    out.delta = <nf_conn_delta *>cnp.PyArray_DATA(delta)
    out.next_keys = <nf_conn_key *>cnp.PyArray_DATA(next_keys)
    out.next_stats = <nf_conn_stats *>cnp.PyArray_DATA(next_stats)
    out.idle_keys = <nf_conn_key *>cnp.PyArray_DATA(idle_keys)
    out.n_delta = out.n_next = out.n_idle = 0

    # entries of the three inputs, then nmax more for the sort's scratch
    cdef Py_ssize_t nmax = max(nP, nC, nX)
    cdef _Scratch scratch
    cdef bint shared = _scratch_lock.acquire(False)
    scratch = _scratch if shared else _Scratch()  # a concurrent call gets its own
    cdef sent_t *P
    cdef sent_t *C
    cdef sent_t *X
    cdef sent_t *tmp
    cdef Py_ssize_t i
    try:
        P = scratch.reserve(nP + nC + nX + nmax)
        C = P + nP
        X = C + nC
        tmp = X + nX
        with nogil:
            for i in range(nP):
                fill_entry(&P[i], &PK[i], &PS[i], <uint32_t>i)
            for i in range(nC):
                fill_entry(&C[i], &CK[i], &CS[i], <uint32_t>i)
            for i in range(nX):
                fill_entry(&X[i], &CE[i].key, &CE[i].stats, <uint32_t>i)
            # prev normally comes back in our own order: checking is cheap
            if not is_sorted(P, nP):
                sort_entries(P, tmp, nP)
            sort_entries(C, tmp, nC)
            sort_entries(X, tmp, nX)
            merge_join(P, nP, C, nC, X, nX, PS, CK, CS, CE, idle_before, &out)
    finally:
        if shared:
            _scratch_lock.release()

    # shrink in place (realloc); nothing else references these new arrays
    delta.resize((out.n_delta,), refcheck=False)
    next_keys.resize((out.n_next,), refcheck=False)
    next_stats.resize((out.n_next,), refcheck=False)
    idle_keys.resize((out.n_idle,), refcheck=False)
    return delta, next_keys, next_stats, idle_keys


# ------------------------------------------------------------------ arrow

def delta_to_arrow(delta):
    """DELTA_DTYPE rows -> pyarrow.RecordBatch with DELTA_SCHEMA (columns
    copied out of the rows by numpy, comm by _records.comm_to_arrow; no
    Python object per row)."""
    if not isinstance(delta, np.ndarray) or delta.ndim != 1 or delta.dtype != DELTA_DTYPE:
        raise TypeError("delta_to_arrow: expected the 1-d DELTA_DTYPE array returned by merge()")
    cdef cnp.ndarray d = np.ascontiguousarray(delta)
    cdef Py_ssize_t n = d.shape[0]
    comm = comm_to_arrow(d["comm"])

    def col(name):
        return pa.array(np.ascontiguousarray(d[name]))

    def addr(name):
        raw = np.ascontiguousarray(d[name]).view(np.uint8)
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw)])

    return pa.RecordBatch.from_arrays([
        col("pid"), comm, col("family"), col("proto"), col("direction"),
        addr("laddr"), col("lport"), addr("raddr"), col("rport"),
        col("d_bytes_sent"), col("d_bytes_recv"), col("d_retransmits"),
        col("rtt_us"), col("rtt_var_us"), col("established"), col("closed"),
    ], schema=DELTA_SCHEMA)

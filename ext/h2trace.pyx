"""HTTP/2 streams of ebpf-trace: the calls of bpf/trace.bpf.c on HTTP/2
connections -> one span per stream (gRPC: per call), without a Python
object per call, frame or stream.

On a connection that opened with the client preface the kernel sends every
call (span_msg.more TRACE_MORE_H2_CALL), each with its first
TRACE_PAYLOAD_MAX bytes. ``H2Tracker`` keeps, in C memory across steps:

* per connection and direction, where the current frame is (frames run
  across calls: a header cut between two calls, a body bytes long), the
  header block being put together (HEADERS, its CONTINUATIONs; padding
  and priority fields left out) and its HPACK table (ext/hpack.pyx, C
  interface ext/includes/dkebpf/_hpack.pxd);
* per stream, its request (the HEADERS in the direction of the preface:
  :method, :path, content-type, the app trace context; the record that
  carried it, for the thread and addresses) and its response (the first
  HEADERS' :status, the trailers' grpc-status and grpc-message), the
  frame bytes each way, and the TCP sequence numbers of the two HEADERS
  frames (both ends count the same bytes: the linker joins them).

A stream's span ends with the END_STREAM of its response (the trailers,
or DATA), or an RST_STREAM either way (``reset``); a connection's close
ends the streams that had a response (at the response), the others are
dropped (counted). Frame headers follow the rules of ext/http2.pyx
(``h2frame.pxd``). When a frame header lies past a call's capture (a call
longer than TRACE_PAYLOAD_MAX whose frames go on past it) the direction's
frame boundary is lost: it is found again at a call that starts with a
valid frame header, but its HPACK table is then unknown (a header block
may have been missed): no new request of that connection gets a span
rather than a wrong :path. A connection that opened before the tracker saw
its preface is followed from a call the kernel flagged (whole frames,
include/trace_span.bpf.h span_h2_mark) whose HEADERS tells requests from
responses, with partial HPACK tables (``midstream``).

HTTP/2 inside TLS (bpf/tls.bpf.c: the plaintext of OpenSSL's calls, every
call once the preface was seen, under the socket's key | TLS_SK_TAG) is
followed the same way: the kernel's seq of a TLS call is where the TLS
record carrying its first byte ends + that byte's offset in the record's
plaintext, so a frame's (seq + its offset in the call) is the same at both
ends for every frame decoded (a frame header is read only within a call's
first TRACE_PAYLOAD_MAX bytes, which of an SSL_write lie in its first
record, the one its seq names). On a TLS connection seen mid-stream the
kernel does not know where a read begins in its record until a read starts
one (span_msg.seq_unknown): a HEADERS frame read there gets req_seq /
resp_seq 0, never a guess (the linker then joins nothing by it).

``tests/reference/h2trace_ref.py`` holds the same rules in plain Python.
"""
from libc.stdint cimport int16_t, int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

cimport cython
import numpy as np
cimport numpy as cnp

from trace cimport *
from dk_common cimport offset_of, mix64
from bytebuf cimport bytebuf, bytebuf_reserve
from h2frame cimport h2_frame_t, h2_frame_header, H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_PUSH_PROMISE, \
    H2_CONTINUATION, H2_FLAG_END_STREAM, H2_FLAG_END_HEADERS, H2_FLAG_PADDED, H2_FLAG_PRIORITY, h2_preface_at, \
    h2_frames_exact
from dkebpf._hpack cimport hstate_t, hdr_t, entry_t, hpack_new, hpack_free, hpack_fields, hpack_block_kind

cdef extern from *:
    void __builtin_prefetch(const void *p) nogil

cnp.import_array()

__all__ = ["H2Tracker", "SPAN_DTYPE", "HEAD_NAMES"]

DEF METHOD_CAP = 16
DEF PATH_CAP = 200
DEF CTYPE_CAP = 40
DEF GMSG_CAP = 100
DEF BLOCK_MAX = 65536      # header block bytes put together at most (larger: its table is given up)
DEF TABLE_LIMIT = 65536    # largest HPACK table size update accepted
DEF E_LOST = 11            # hpack's E_CUT_FRAME: a header block may have been missed

cdef struct dir_t:
    hstate_t *hp
    uint32_t skip          # body bytes of the current frame still to come
    uint32_t fstream, fseq, flen
    uint8_t fseq_unknown   # fseq is not known (its call's: span_msg.seq_unknown)
    int64_t frec           # record of the current frame's header (in the step `fgen`)
    uint64_t fts           # its time
    uint64_t fgen
    uint8_t fhdr[9]
    uint8_t fhdr_n
    uint8_t ftype, fflags
    uint8_t collect        # its body is gathered (a header block fragment)
    uint8_t lost           # frame boundary lost
    uint8_t block_open     # a header block waits for CONTINUATION
    uint8_t block_flags
    uint32_t block_stream, block_seq
    uint8_t block_seq_unknown
    uint32_t hstream       # the stream of the HEADERS block under way (0: none), its flags
    uint8_t hflags
    int64_t block_rec      # the record of its HEADERS frame (in the step `block_gen`), its time
    uint64_t block_ts, block_gen
    uint8_t block_head[SPAN_MSG_MIN_SIZE]  # that record without payload (a block may end a step later)
    bytebuf body
    bytebuf block

cdef struct conn_t:
    uint64_t sk
    uint64_t last_ns       # time of its last record (expire(): its close may be lost)
    uint8_t req_op         # TRACE_OP_* of the requests (the preface's)
    uint8_t midstream      # its preface not seen: HPACK tables partial (hstate_t.partial)
    int32_t streams        # open streams
    dir_t d[2]             # 0 requests' direction, 1 responses'

# one stream: while open in the tracker, and as a span row (SPAN_DTYPE)
cdef struct stream_t:
    uint64_t sk
    uint64_t start_ns, resp_ns, end_ns
    uint64_t req_bytes, resp_bytes
    uint64_t trace_hi, trace_lo, parent
    int64_t req_rec        # this step's record of the request; -1 once `head` holds it
    uint32_t id, req_seq, resp_seq
    uint16_t status
    int16_t grpc_status
    int8_t sampled
    uint8_t source, incoming, have_resp, reset, done
    uint8_t midstream      # of a connection seen mid-stream: a header it could not know is absent
    uint8_t method_len, path_len, ctype_len, gmsg_len   # 0xFF: absent
    char method[METHOD_CAP]
    char path[PATH_CAP]
    char ctype[CTYPE_CAP]
    char gmsg[GMSG_CAP]
    uint8_t head[SPAN_MSG_MIN_SIZE]   # the request record without its payload

# ------------------------------------------------- an open-addressing index

cdef struct slot_t:
    uint64_t k1, k2
    int32_t v              # pool index + 1; 0 empty

cdef struct index_t:
    slot_t *s
    uint64_t mask
    int64_t n


cdef inline uint64_t _h(uint64_t k1, uint64_t k2) noexcept nogil:
    return mix64(k1 ^ mix64(k2 + 0x9e3779b97f4a7c15ULL))


cdef int _ix_init(index_t *t, uint64_t cap) noexcept nogil:
    t.s = <slot_t *>calloc(cap, sizeof(slot_t))
    t.mask = cap - 1
    t.n = 0
    return 0 if t.s != NULL else -1


cdef int32_t _ix_get(const index_t *t, uint64_t k1, uint64_t k2) noexcept nogil:
    cdef uint64_t i = _h(k1, k2) & t.mask
    while t.s[i].v:
        if t.s[i].k1 == k1 and t.s[i].k2 == k2:
            return t.s[i].v - 1
        i = (i + 1) & t.mask
    return -1


cdef int _ix_put(index_t *t, uint64_t k1, uint64_t k2, int32_t v) noexcept nogil:
    cdef uint64_t i, j, cap
    cdef slot_t *old
    if (t.n + 1) * 2 > <int64_t>(t.mask + 1):  # grow at half full
        old = t.s
        cap = (t.mask + 1) * 2
        t.s = <slot_t *>calloc(cap, sizeof(slot_t))
        if t.s == NULL:
            t.s = old
            return -1
        for j in range(cap // 2):
            if old[j].v:
                i = _h(old[j].k1, old[j].k2) & (cap - 1)
                while t.s[i].v:
                    i = (i + 1) & (cap - 1)
                t.s[i] = old[j]
        t.mask = cap - 1
        free(old)
    i = _h(k1, k2) & t.mask
    while t.s[i].v:
        i = (i + 1) & t.mask
    t.s[i].k1 = k1
    t.s[i].k2 = k2
    t.s[i].v = v + 1
    t.n += 1
    return 0


cdef void _ix_del(index_t *t, uint64_t k1, uint64_t k2) noexcept nogil:
    """Linear probing's deletion by backward shift (no tombstones)."""
    cdef uint64_t i = _h(k1, k2) & t.mask, j, home
    while t.s[i].v:
        if t.s[i].k1 == k1 and t.s[i].k2 == k2:
            break
        i = (i + 1) & t.mask
    if not t.s[i].v:
        return
    t.n -= 1
    j = i
    while True:
        t.s[i].v = 0
        while True:
            j = (j + 1) & t.mask
            if not t.s[j].v:
                return
            home = _h(t.s[j].k1, t.s[j].k2) & t.mask
            # the entry at j may move to i when its home is not in (i, j]
            if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                break
        t.s[i] = t.s[j]
        i = j


# ------------------------------------------------------- pools with free lists

cdef struct pool_t:
    char *items
    int32_t *free_
    int32_t nfree, used, cap
    size_t size


cdef int32_t _pool_take(pool_t *p) noexcept nogil:
    cdef int32_t cap
    cdef char *items
    cdef int32_t *fr
    if p.nfree:
        p.nfree -= 1
        return p.free_[p.nfree]
    if p.used == p.cap:
        cap = p.cap * 2 if p.cap else 64
        items = <char *>calloc(cap, p.size)
        fr = <int32_t *>malloc(cap * sizeof(int32_t))
        if items == NULL or fr == NULL:
            free(items)
            free(fr)
            return -1
        if p.cap:
            memcpy(items, p.items, p.cap * p.size)
            memcpy(fr, p.free_, p.nfree * sizeof(int32_t))
        free(p.items)
        free(p.free_)
        p.items = items
        p.free_ = fr
        p.cap = cap
    p.used += 1
    return p.used - 1


cdef inline void _pool_give(pool_t *p, int32_t i) noexcept nogil:
    p.free_[p.nfree] = i
    p.nfree += 1


# ----------------------------------------------------------------- spans

cdef stream_t _s
_F = [("sk", "<u8", offset_of(&_s, &_s.sk)), ("start_ns", "<u8", offset_of(&_s, &_s.start_ns)),
      ("resp_ns", "<u8", offset_of(&_s, &_s.resp_ns)), ("end_ns", "<u8", offset_of(&_s, &_s.end_ns)),
      ("req_bytes", "<u8", offset_of(&_s, &_s.req_bytes)), ("resp_bytes", "<u8", offset_of(&_s, &_s.resp_bytes)),
      ("trace_hi", "<u8", offset_of(&_s, &_s.trace_hi)), ("trace_lo", "<u8", offset_of(&_s, &_s.trace_lo)),
      ("parent", "<u8", offset_of(&_s, &_s.parent)), ("id", "<u4", offset_of(&_s, &_s.id)),
      ("req_seq", "<u4", offset_of(&_s, &_s.req_seq)), ("resp_seq", "<u4", offset_of(&_s, &_s.resp_seq)),
      ("status", "<u2", offset_of(&_s, &_s.status)), ("grpc_status", "<i2", offset_of(&_s, &_s.grpc_status)),
      ("sampled", "i1", offset_of(&_s, &_s.sampled)), ("source", "u1", offset_of(&_s, &_s.source)),
      ("incoming", "u1", offset_of(&_s, &_s.incoming)), ("have_resp", "u1", offset_of(&_s, &_s.have_resp)),
      ("reset", "u1", offset_of(&_s, &_s.reset)), ("midstream", "u1", offset_of(&_s, &_s.midstream)),
      ("method_len", "u1", offset_of(&_s, &_s.method_len)), ("path_len", "u1", offset_of(&_s, &_s.path_len)),
      ("ctype_len", "u1", offset_of(&_s, &_s.ctype_len)), ("gmsg_len", "u1", offset_of(&_s, &_s.gmsg_len)),
      ("method", f"S{METHOD_CAP}", offset_of(&_s, &_s.method)), ("path", f"V{PATH_CAP}", offset_of(&_s, &_s.path)),
      ("ctype", f"S{CTYPE_CAP}", offset_of(&_s, &_s.ctype)), ("gmsg", f"V{GMSG_CAP}", offset_of(&_s, &_s.gmsg)),
      ("head", f"V{SPAN_MSG_MIN_SIZE}", offset_of(&_s, &_s.head))]
SPAN_DTYPE = np.dtype({"names": [f[0] for f in _F], "formats": [f[1] for f in _F],
                       "offsets": [f[2] for f in _F], "itemsize": sizeof(stream_t)})
HEAD_OFFSET = offset_of(&_s, &_s.head)
HEAD_NAMES = ("ts", "sk", "sk_sent", "sk_recv", "ts_last_send", "ts_last_recv", "user", "laddr", "raddr", "pid",
              "tid", "seq", "bytes", "lport", "rport", "cap_len", "family", "op", "more", "seq_unknown", "comm",
              "pcomm")


cdef inline void _copy_str(char *dst, uint8_t *dlen, int cap, const uint8_t *arena, uint32_t off,
                           uint32_t n) noexcept nogil:
    if n == <uint32_t>0xFFFFFFFF:
        dlen[0] = 0xFF
        return
    if n > <uint32_t>cap:
        n = cap
    memcpy(dst, arena + off, n)
    dlen[0] = <uint8_t>n


# H2Tracker.stats, in the order of the counts[] of feed() and expire()
_COUNTERS = ("h2_connections", "h2_streams", "h2_unanswered", "h2_expired", "h2_boundary_lost", "h2_header_errors",
             "h2_restarted", "h2_connections_expired", "h2_connections_midstream")
DEF NCOUNTS = 9


cdef uint8_t _midstream_req_op(const span_msg *m, int cap) noexcept nogil:
    """A call of an HTTP/2 connection whose preface was not seen (the
    kernel flagged it, include/trace_span.bpf.h span_h2_mark, for a socket
    or the plaintext of its TLS: pair() gives its records to the tracker):
    the op of its requests when the call is whole frames (the kernel's rule) with a
    HEADERS frame that tells a request or a response by its first header
    (hpack_block_kind); 0 when it does not tell (a later call may)."""
    cdef int64_t off = 0, a, b
    cdef h2_frame_t f
    cdef int kind
    if m.more == TRACE_MORE_SHORT or <int64_t>m.bytes != cap or not h2_frames_exact(m.payload, cap):
        return 0
    while off + 9 <= cap:
        h2_frame_header(m.payload + off, &f)
        if f.type == H2_HEADERS and f.stream & 1 and off + 9 + f.length <= cap:
            a = off + 9
            b = a + f.length
            if f.flags & H2_FLAG_PADDED:
                b -= m.payload[a] if a < b else 0
                a += 1
            if f.flags & H2_FLAG_PRIORITY:
                a += 5
            kind = hpack_block_kind(m.payload + a, b - a) if a < b else 0
            if kind:
                return m.op if kind == 1 else (TRACE_OP_RECV if m.op == TRACE_OP_SEND else TRACE_OP_SEND)
        off += 9 + f.length
    return 0


@cython.final  # its methods called directly, not through a table: inlined where small
cdef class H2Tracker:
    """HTTP/2 connections and streams across steps (see the module doc)."""
    cdef index_t conns_ix, streams_ix
    cdef pool_t conns, streams
    cdef bytebuf done      # finished stream_t rows
    cdef bytebuf arena
    cdef uint64_t gen      # feed() calls: record indexes are of one step
    cdef object out        # spans()'s rows, reused: fresh pages per step cost their faults
    cdef uint64_t last_sk  # the connection of the last record (records come by socket)
    cdef int32_t last_ci
    cdef public dict stats

    def __cinit__(self):
        self.conns.size = sizeof(conn_t)
        self.streams.size = sizeof(stream_t)
        if _ix_init(&self.conns_ix, 256) or _ix_init(&self.streams_ix, 1024):
            raise MemoryError()
        self.stats = {name: 0 for name in _COUNTERS}

    def __dealloc__(self):
        cdef int32_t i
        cdef conn_t *c
        if self.conns.items != NULL:
            for i in range(self.conns.used):
                c = <conn_t *>self.conns.items + i
                if c.sk:
                    self._drop_conn(c)
        free(self.conns.items)
        free(self.conns.free_)
        free(self.streams.items)
        free(self.streams.free_)
        free(self.conns_ix.s)
        free(self.streams_ix.s)
        free(self.done.p)
        free(self.arena.p)

    cdef void _drop_conn(self, conn_t *c) noexcept nogil:
        cdef int k
        for k in range(2):
            hpack_free(c.d[k].hp)
            free(c.d[k].body.p)
            free(c.d[k].block.p)
        memset(c, 0, sizeof(conn_t))

    @property
    def open_streams(self):
        return self.streams_ix.n

    @property
    def connections(self):
        return self.conns_ix.n

    @property
    def nbytes(self):
        """The bytes it allocated, each allocation once: pools, indexes,
        buffers, and per connection its HPACK tables and header buffers."""
        cdef size_t n = ((self.conns.cap * sizeof(conn_t) + self.streams.cap * sizeof(stream_t))
                         + (self.conns.cap + self.streams.cap) * sizeof(int32_t)
                         + (self.conns_ix.mask + self.streams_ix.mask + 2) * sizeof(slot_t)
                         + self.done.cap + self.arena.cap)
        cdef int32_t i
        cdef int k
        cdef conn_t *c
        cdef hstate_t *hp
        for i in range(self.conns.used):
            c = <conn_t *>self.conns.items + i
            if not c.sk:
                continue
            for k in range(2):
                n += c.d[k].body.cap + c.d[k].block.cap
                hp = c.d[k].hp
                if hp != NULL:
                    # the entries' blobs: their RFC size (name + value + 32) is about their malloc's
                    n += (sizeof(hstate_t) + hp.cap * sizeof(entry_t) + hp.size + hp.frag.cap + hp.hname.cap
                          + hp.hvalue.cap)
        return n

    def following(self, sks):
        """Per socket of sks (uint64): whether its connection is followed."""
        cdef const uint64_t[::1] K = np.ascontiguousarray(sks, np.uint64)
        out = np.zeros(K.shape[0], bool)
        cdef uint8_t[::1] O = out.view(np.uint8)
        cdef Py_ssize_t i
        for i in range(K.shape[0]):
            O[i] = _ix_get(&self.conns_ix, K[i], 0) >= 0
        return out

    def feed(self, msgs, idx, role, until, int request_role):
        """Take the records msgs[idx] (calls and closes of HTTP/2
        connections, by socket then time). A record that carried a
        request's HEADERS gets role[i] = request_role and until[i]: the end
        of its streams' spans, UINT64_MAX while one is open (for
        link_threads)."""
        cdef cnp.ndarray M_arr = msgs
        if M_arr.dtype.itemsize != sizeof(span_msg) or not M_arr.flags.c_contiguous:
            raise TypeError("H2Tracker.feed: msgs must be a contiguous span_msg array")
        cdef const span_msg *M = <const span_msg *>cnp.PyArray_DATA(M_arr) if len(M_arr) else NULL
        cdef const int64_t[::1] I = np.ascontiguousarray(idx, np.int64)
        cdef uint8_t[::1] R = role
        cdef uint64_t[::1] U = until
        cdef Py_ssize_t k, n = I.shape[0]
        cdef int64_t counts[NCOUNTS]
        cdef uint8_t rr = request_role
        memset(counts, 0, sizeof(counts))
        self.gen += 1
        if n and (R.shape[0] != len(M_arr) or U.shape[0] != len(M_arr)):
            raise ValueError("H2Tracker.feed: role and until must have a value per record")
        with nogil:
            for k in range(n):
                if k + 2 < n:  # records are 1.2 kB apart: what is read of them, fetched ahead
                    __builtin_prefetch(&M[I[k + 2]])
                    __builtin_prefetch(&M[I[k + 2]].payload[0])
                    __builtin_prefetch(&M[I[k + 2]].payload[64])
                self._record(M, I[k], &R[0], &U[0], rr, counts)
            self._untils(&U[0])
        self._count(counts)

    cdef int _count(self, const int64_t *counts) except -1:
        cdef int k
        for k in range(NCOUNTS):
            self.stats[_COUNTERS[k]] += counts[k]
        return 0

    cdef void _untils(self, uint64_t *U) noexcept nogil:
        """until of this step's request records: their streams' ends."""
        cdef int32_t i
        cdef stream_t *s
        cdef uint64_t end
        for i in range(self.streams.used):
            s = <stream_t *>self.streams.items + i
            if s.sk and s.req_rec >= 0 and s.incoming:
                U[s.req_rec] = 0xFFFFFFFFFFFFFFFFULL
        for i in range(<int32_t>(self.done.n // sizeof(stream_t))):
            s = <stream_t *>self.done.p + i
            if s.req_rec >= 0 and s.incoming and U[s.req_rec] < s.end_ns:
                U[s.req_rec] = s.end_ns

    cdef void _record(self, const span_msg *M, int64_t r, uint8_t *R, uint64_t *U, uint8_t rr,
                      int64_t *counts) noexcept nogil:
        cdef const span_msg *m = &M[r]
        cdef int32_t ci = self.last_ci if m.sk == self.last_sk else _ix_get(&self.conns_ix, m.sk, 0)
        cdef conn_t *c
        cdef int cap = m.cap_len if m.cap_len < TRACE_PAYLOAD_MAX else TRACE_PAYLOAD_MAX
        cdef bint preface
        cdef uint8_t req_op
        if m.op == TRACE_OP_CLOSE:
            if ci >= 0:
                self._close(<conn_t *>self.conns.items + ci, ci, counts)
            return
        if ci >= 0 and not m.more and h2_preface_at(m.payload, cap):
            # a new connection on the socket of one whose close was lost
            # (a full ring, the kernel's LRU): the old one ends here
            self._close(<conn_t *>self.conns.items + ci, ci, counts)
            counts[6] += 1
            ci = -1
        if ci < 0:
            # a connection is followed from its preface on (both ends see
            # it first), or from a call of one seen mid-stream (h2c and
            # TLS alike: the kernel's rule is one, trace_span.bpf.h)
            preface = not m.more and h2_preface_at(m.payload, cap)
            req_op = m.op if preface else _midstream_req_op(m, cap)
            if not req_op:
                return
            ci = _pool_take(&self.conns)
            if ci < 0 or _ix_put(&self.conns_ix, m.sk, 0, ci):
                return
            c = <conn_t *>self.conns.items + ci
            memset(c, 0, sizeof(conn_t))
            c.sk = m.sk
            c.req_op = req_op
            c.midstream = not preface
            c.d[0].hp = hpack_new(TABLE_LIMIT, c.midstream)
            c.d[1].hp = hpack_new(TABLE_LIMIT, c.midstream)
            if preface:
                c.d[0].skip = 24    # the preface: no frame
                c.d[0].ftype = 0xFF
                counts[0] += 1
            else:
                # this call starts at a frame; the other way's next frame
                # is found again as after a capture's cut
                c.d[1 if m.op == req_op else 0].lost = 1
                counts[8] += 1
        c = <conn_t *>self.conns.items + ci
        c.last_ns = m.ts_ns
        self.last_sk = m.sk
        self.last_ci = ci
        self._calls(c, M, r, R, rr, counts)

    cdef void _lose(self, conn_t *c, int w, int64_t *counts) noexcept nogil:
        cdef dir_t *d = &c.d[w]
        self._break(c, w)
        d.lost = 1
        d.skip = 0
        d.fhdr_n = 0
        d.block_open = 0
        d.collect = 0
        counts[4] += 1

    cdef void _break(self, conn_t *c, int w) noexcept nogil:
        """The direction's HPACK table is unknown from here (a header block
        missed or not decoded). The response HEADERS block under way, with
        END_STREAM (gRPC's trailers), still ends its stream (its status
        unknown): else every later stream of the connection would expire."""
        cdef dir_t *d = &c.d[w]
        cdef stream_t *s
        if d.hp != NULL and not d.hp.error:
            d.hp.error = E_LOST
        if w == 1 and d.hstream and d.hflags & H2_FLAG_END_STREAM:
            s = self._stream(c.sk, d.hstream)
            if s != NULL:
                self._finish(c, s, d.fts)
        d.hstream = 0

    cdef void _calls(self, conn_t *c, const span_msg *M, int64_t r, uint8_t *R, uint8_t rr,
                     int64_t *counts) noexcept nogil:
        cdef const span_msg *m = &M[r]
        cdef int w = 0 if m.op == c.req_op else 1
        cdef dir_t *d = &c.d[w]
        cdef int64_t L = m.bytes, cap = m.cap_len if m.cap_len < TRACE_PAYLOAD_MAX else TRACE_PAYLOAD_MAX
        cdef int64_t off = 0, take, have
        cdef h2_frame_t f
        if cap > L:
            cap = L
        if d.lost:
            # found again at a call that starts with a valid frame header
            if cap < 9 or not h2_frame_header(m.payload, &f) or f.length > (1 << 24):
                return
            d.lost = 0
        while off < L:
            if d.skip:
                take = d.skip if d.skip < L - off else L - off
                if d.collect:
                    have = cap - off if cap > off else 0
                    if have < take or bytebuf_reserve(&d.body, take) < 0:
                        d.collect = 0   # cut by the capture: the block is lost
                        self._break(c, w)
                        d.block_open = 0
                    else:
                        memcpy(d.body.p + d.body.n, m.payload + off, take)
                        d.body.n += take
                off += take
                d.skip -= <uint32_t>take
                if d.skip == 0 and d.collect:
                    self._frame_body(c, w, d.body.p, d.body.n, R, rr, counts)
                continue
            if off >= cap:      # the next frame header is past the capture
                self._lose(c, w, counts)
                return
            if d.fhdr_n == 0:
                d.fseq = m.seq + <uint32_t>off
                d.fseq_unknown = m.seq_unknown
                d.frec = r
            take = 9 - d.fhdr_n
            if take > cap - off:
                take = cap - off
            memcpy(d.fhdr + d.fhdr_n, m.payload + off, take)
            d.fhdr_n += <uint8_t>take
            off += take
            if d.fhdr_n < 9:
                if off < L:     # cut by the capture, not by the call
                    self._lose(c, w, counts)
                return
            d.fhdr_n = 0
            if not h2_frame_header(d.fhdr, &f):
                self._lose(c, w, counts)
                return
            d.ftype = f.type
            d.fflags = f.flags
            d.fstream = f.stream
            d.flen = f.length
            d.skip = f.length
            d.frec = r
            d.fts = m.ts_ns
            d.fgen = self.gen
            if f.type == H2_HEADERS:
                memcpy(d.block_head, m, SPAN_MSG_MIN_SIZE)
                d.hstream = f.stream
                d.hflags = f.flags
            self._frame_start(c, w, m, counts)
            d.collect = f.type == H2_HEADERS or f.type == H2_CONTINUATION or f.type == H2_PUSH_PROMISE
            if d.collect and (d.hp == NULL or d.hp.error or f.length > BLOCK_MAX):
                d.collect = 0
                self._break(c, w)   # (a HEADERS on a broken table: its END_STREAM still counts)
            d.body.n = 0
            if d.collect and off + f.length <= cap:
                # the whole body in this call's capture (the common case): read in place
                d.collect = 0
                self._frame_body(c, w, m.payload + off, f.length, R, rr, counts)

    cdef stream_t *_stream(self, uint64_t sk, uint32_t id) noexcept nogil:
        cdef int32_t i = _ix_get(&self.streams_ix, sk, id)
        return <stream_t *>self.streams.items + i if i >= 0 else NULL

    cdef void _frame_start(self, conn_t *c, int w, const span_msg *m, int64_t *counts) noexcept nogil:
        """A frame header was read: counts, DATA's and RST_STREAM's ends."""
        cdef dir_t *d = &c.d[w]
        cdef stream_t *s
        if d.fstream == 0:
            return
        s = self._stream(c.sk, d.fstream)
        if s == NULL:
            return
        if w == 0:
            s.req_bytes += 9 + d.flen
        else:
            s.resp_bytes += 9 + d.flen
        if d.ftype == H2_RST_STREAM:
            s.reset = 1
            self._finish(c, s, m.ts_ns)
        elif d.ftype == H2_DATA and w == 1 and d.fflags & H2_FLAG_END_STREAM:
            self._finish(c, s, m.ts_ns)

    cdef void _finish(self, conn_t *c, stream_t *s, uint64_t end) noexcept nogil:
        cdef uint32_t id = s.id
        s.end_ns = end
        s.done = 1
        if bytebuf_reserve(&self.done, sizeof(stream_t)) == 0:
            memcpy(self.done.p + self.done.n, s, sizeof(stream_t))
            self.done.n += sizeof(stream_t)
        _pool_give(&self.streams, <int32_t>(<char *>s - self.streams.items) // <int32_t>sizeof(stream_t))
        s.sk = 0
        _ix_del(&self.streams_ix, c.sk, id)
        c.streams -= 1

    cdef void _frame_body(self, conn_t *c, int w, const uint8_t *p, int64_t n, uint8_t *R, uint8_t rr,
                          int64_t *counts) noexcept nogil:
        """The body p[0:n] of a header block fragment frame."""
        cdef dir_t *d = &c.d[w]
        cdef int64_t a = 0, b = n, pad = 0
        if d.ftype != H2_CONTINUATION:
            if d.fflags & H2_FLAG_PADDED:
                if b < 1:
                    return
                pad = p[0]
                a = 1
            if d.ftype == H2_HEADERS and d.fflags & H2_FLAG_PRIORITY:
                a += 5
            if d.ftype == H2_PUSH_PROMISE:
                a += 4
            b -= pad
            if a > b:
                self._break(c, w)
                counts[5] += 1
                return
            d.block.n = 0
            d.block_open = 1
            d.block_stream = d.fstream if d.ftype == H2_HEADERS else 0
            d.block_flags = d.fflags
            d.block_seq = d.fseq
            d.block_seq_unknown = d.fseq_unknown
            d.block_rec = d.frec
            d.block_ts = d.fts
            d.block_gen = d.fgen
            if d.fflags & H2_FLAG_END_HEADERS:  # a whole block: decoded where it is
                d.block_open = 0
                self._block(c, w, p + a, b - a, R, rr, counts)
                return
        elif not d.block_open:
            self._break(c, w)
            counts[5] += 1
            return
        if d.block.n + (b - a) > BLOCK_MAX or bytebuf_reserve(&d.block, b - a) < 0:
            self._break(c, w)
            d.block_open = 0
            return
        if b > a:
            memcpy(d.block.p + d.block.n, p + a, b - a)
            d.block.n += b - a
        if d.fflags & H2_FLAG_END_HEADERS:
            d.block_open = 0
            self._block(c, w, d.block.p, d.block.n, R, rr, counts)

    cdef void _block(self, conn_t *c, int w, const uint8_t *block, int64_t n, uint8_t *R, uint8_t rr,
                     int64_t *counts) noexcept nogil:
        """A whole header block: decoded on the direction's table, then
        a request or a response of its stream."""
        cdef dir_t *d = &c.d[w]
        cdef hdr_t h
        cdef stream_t *s
        cdef int32_t si
        cdef bint here = d.block_gen == self.gen  # its record is in this step
        self.arena.n = 0
        # the app trace context is a request's (w 0): not looked for in responses
        if hpack_fields(d.hp, block, n, &h, &self.arena, w == 0):
            counts[5] += 1
            self._break(c, w)
            return
        d.hstream = 0
        if d.block_stream == 0:   # PUSH_PROMISE: its table changes only
            return
        s = self._stream(c.sk, d.block_stream)
        if w == 0:
            if s != NULL or not (d.block_stream & 1):
                return  # the request's trailers; a stream the server opened
            si = _pool_take(&self.streams)
            if si < 0 or _ix_put(&self.streams_ix, c.sk, d.block_stream, si):
                return
            s = <stream_t *>self.streams.items + si
            memset(s, 0, sizeof(stream_t))
            s.sk = c.sk
            s.id = d.block_stream
            s.req_rec = d.block_rec if here else -1
            if not here:
                memcpy(s.head, d.block_head, SPAN_MSG_MIN_SIZE)
            s.start_ns = d.block_ts
            s.req_seq = 0 if d.block_seq_unknown else d.block_seq   # 0: not known (no join)
            s.req_bytes = 9 + d.flen  # counted from its first frame, this one
            s.incoming = c.req_op == TRACE_OP_RECV
            s.midstream = c.midstream
            s.grpc_status = -1
            s.trace_hi = h.trace_hi
            s.trace_lo = h.trace_lo
            s.parent = h.parent
            s.sampled = h.sampled
            s.source = h.source
            _copy_str(s.method, &s.method_len, METHOD_CAP, self.arena.p, h.str_off[0], h.str_len[0])
            _copy_str(s.path, &s.path_len, PATH_CAP, self.arena.p, h.str_off[1], h.str_len[1])
            _copy_str(s.ctype, &s.ctype_len, CTYPE_CAP, self.arena.p, h.str_off[3], h.str_len[3])
            s.gmsg_len = 0xFF
            if here:
                R[d.block_rec] = rr
            c.streams += 1
            counts[1] += 1
            return
        if s == NULL:
            return
        if not s.have_resp:
            s.have_resp = 1
            s.resp_ns = d.block_ts
            s.resp_seq = 0 if d.block_seq_unknown else d.block_seq
            s.status = h.status
        if h.grpc_status >= 0:
            s.grpc_status = h.grpc_status
            _copy_str(s.gmsg, &s.gmsg_len, GMSG_CAP, self.arena.p, h.str_off[4], h.str_len[4])
        if d.block_flags & H2_FLAG_END_STREAM:
            self._finish(c, s, d.fts)

    cdef void _close(self, conn_t *c, int32_t ci, int64_t *counts) noexcept nogil:
        """The socket ended: streams with a response end at it (the
        response's start), the others are dropped; the connection goes."""
        cdef int32_t i
        cdef stream_t *s
        if c.streams:
            for i in range(self.streams.used):
                s = <stream_t *>self.streams.items + i
                if s.sk != c.sk:
                    continue
                if s.have_resp:
                    self._finish(c, s, s.resp_ns)
                else:
                    counts[2] += 1
                    _pool_give(&self.streams, i)
                    s.sk = 0
                    _ix_del(&self.streams_ix, c.sk, s.id)
                    c.streams -= 1
        _ix_del(&self.conns_ix, c.sk, 0)
        if self.last_sk == c.sk:
            self.last_sk = 0
        self._drop_conn(c)
        _pool_give(&self.conns, ci)

    def expire(self, uint64_t before_ns, uint64_t conns_before_ns=0):
        """Drop the streams whose request started before before_ns (a
        response that never came), and end the connections without a
        record since conns_before_ns (as their close would: it may have
        been lost); returns how many streams were dropped."""
        cdef int32_t i, ci
        cdef stream_t *s
        cdef conn_t *c
        cdef int64_t n = 0
        cdef int64_t counts[NCOUNTS]
        memset(counts, 0, sizeof(counts))
        with nogil:
            for i in range(self.conns.used):
                c = <conn_t *>self.conns.items + i
                if c.sk and c.last_ns < conns_before_ns:
                    self._close(c, i, counts)
                    counts[7] += 1
            for i in range(self.streams.used):
                s = <stream_t *>self.streams.items + i
                if s.sk and s.start_ns < before_ns:
                    ci = _ix_get(&self.conns_ix, s.sk, 0)
                    if ci >= 0:
                        (<conn_t *>self.conns.items + ci).streams -= 1
                    _ix_del(&self.streams_ix, s.sk, s.id)
                    _pool_give(&self.streams, i)
                    s.sk = 0
                    n += 1
        counts[3] += n
        self._count(counts)
        return n

    def spans(self, msgs):
        """The streams finished since the last call (SPAN_DTYPE), after
        link_threads gave their records a thread_trace_id: the request
        record's fields (without payload) are copied into ``head`` of
        every stream that started in this step, finished or not. A view
        of the tracker's buffer: valid until the next call."""
        cdef cnp.ndarray M_arr = msgs
        cdef const span_msg *M = <const span_msg *>cnp.PyArray_DATA(M_arr) if len(M_arr) else NULL
        cdef int32_t i, nd = <int32_t>(self.done.n // sizeof(stream_t))
        cdef stream_t *s
        cdef Py_ssize_t nm = len(M_arr)
        with nogil:
            for i in range(self.streams.used):
                s = <stream_t *>self.streams.items + i
                if s.sk and 0 <= s.req_rec < nm:
                    memcpy(s.head, &M[s.req_rec], SPAN_MSG_MIN_SIZE)
                    s.req_rec = -1
            for i in range(nd):
                s = <stream_t *>self.done.p + i
                if 0 <= s.req_rec < nm:
                    memcpy(s.head, &M[s.req_rec], SPAN_MSG_MIN_SIZE)
                    s.req_rec = -1
        if self.out is None or len(self.out) < nd:
            self.out = np.empty(max(nd, 2 * (len(self.out) if self.out is not None else 0), 64), SPAN_DTYPE)
        if nd:
            memcpy(cnp.PyArray_DATA(self.out), self.done.p, self.done.n)
        self.done.n = 0
        return self.out[:nd]
